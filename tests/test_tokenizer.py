from collections import Counter

import pytest
import regex

from data import world
from data.bpe import save_bpe, train_bpe
from model import SPECIAL_TOKENS, SPLIT_PATTERN, load_tokenizer

TEXT = ' '.join(world.corpus(world.make_world(0), 300, seed=0)) + ' Ünïcödé ✓ 12345 tabs\tand\nnew lines'


@pytest.fixture(scope='module')
def ranks():
    return train_bpe(TEXT, 400, SPLIT_PATTERN, progress=False)


def test_bpe_training_is_deterministic(ranks):
    assert train_bpe(TEXT, 400, SPLIT_PATTERN, progress=False) == ranks


def test_bpe_ranks_are_bytes_then_merges(ranks):
    assert len(ranks) == 400 and sorted(ranks.values()) == list(range(400))
    assert all(ranks[bytes([b])] == b for b in range(256))
    # every merged token is the concatenation of two tokens with lower ranks
    for token, rank in ranks.items():
        if rank >= 256:
            assert any(ranks.get(token[:i], rank) < rank and ranks.get(token[i:], rank) < rank for i in range(1, len(token)))


def test_frequent_words_become_single_tokens(ranks, tmp_path):
    save_bpe(str(tmp_path / 'tok.bpe'), ranks)
    enc = load_tokenizer(str(tmp_path / 'tok.bpe'))
    pieces = Counter(p for p in regex.findall(SPLIT_PATTERN, TEXT) if len(p.encode()) > 1)
    for piece, _ in pieces.most_common(10):  # the most frequent words are single tokens
        assert len(enc.encode_ordinary(piece)) == 1, piece
    assert len(TEXT) / len(enc.encode_ordinary(TEXT)) > 1.8  # ~2 bytes a token after only 144 merges


def test_round_trip_with_special_tokens(ranks, tmp_path):
    save_bpe(str(tmp_path / 'tok.bpe'), ranks)
    enc = load_tokenizer(str(tmp_path / 'tok.bpe'))
    assert enc.n_vocab == 400 + len(SPECIAL_TOKENS)
    for i, special in enumerate(SPECIAL_TOKENS):
        assert enc.encode(special, allowed_special='all') == [400 + i]
    text = '<|user|>Where does Mira live?<|end|><|assistant|>Mira lives in Willowbrook. ✓<|end|>'
    ids = enc.encode(text, allowed_special='all')
    assert enc.decode(ids) == text
    assert enc.decode(enc.encode_ordinary(TEXT)) == TEXT
    # in ordinary text a special token's spelling is just text, never the special id
    assert not set(enc.encode_ordinary('<|end|>')) & set(range(400, enc.n_vocab))


def test_missing_tokenizer_file_names_the_command(tmp_path):
    with pytest.raises(SystemExit, match='run python data/prepare.py'):
        load_tokenizer(str(tmp_path / 'nope.bpe'))


def test_gpt2_tokenizer_when_downloadable():
    try:
        enc = load_tokenizer('gpt2')
    except Exception as e:  # no network here: tiktoken cannot fetch gpt2's files
        pytest.skip(f'gpt2 encoding not downloadable: {type(e).__name__}')
    assert enc.encode('<|end|>', allowed_special='all') == [50257 + SPECIAL_TOKENS.index('<|end|>')]
    assert enc.decode(enc.encode('Hello world')) == 'Hello world'
