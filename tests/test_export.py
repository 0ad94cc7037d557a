"""export.py: the Hugging Face folder of the tiny SFT checkpoint computes the project's logits, greedy
answers, token ids and chat prompts. Skipped where transformers is not installed (it is optional)."""
import json
import os
import random
import sys

import pytest
import tiktoken
import torch
from tiktoken_ext.openai_public import r50k_pat_str

import export
from conftest import run_script
from data import world
from data.bpe import train_bpe
from model import SPECIAL_TOKENS, SPLIT_PATTERN, load_checkpoint, load_tokenizer, prompt_tokens, save_checkpoint

transformers = pytest.importorskip('transformers')  # optional: pip install transformers safetensors
pytest.importorskip('safetensors')
Tokenizer = pytest.importorskip('tokenizers').Tokenizer  # (comes with transformers)

CONVERSATIONS = [
    'Where does Mira live?',
    [dict(role='user', content='Hi')],
    [dict(role='user', content='Tell me a story about a fox.'), dict(role='assistant', content='Once, a fox ran.'),
     dict(role='user', content='  Now one about a bear,\nin two sentences! 🐻')],
    'Which of these is true? ' + 'Mira lives in Redcliff. ' * 4,  # ~100 tokens of the tiny model's 128
]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread for these tiny models: HF's generate runs many small ops, and on a busy
    2-core machine two threads wait for each other (10 s instead of 0.1 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def exported(tiny_chain, tmp_path_factory):
    """(the project's model and tokenizer, HF's model and tokenizer) of the tiny SFT checkpoint."""
    out = str(tmp_path_factory.mktemp('hf') / 'sft')
    run_script('export.py', f'--ckpt={tiny_chain["sft"]}', f'--out={out}')
    model, meta = load_checkpoint(os.path.join(tiny_chain['sft'], 'ckpt.pt'), 'sft.py')
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out)  # no custom code: a plain LlamaForCausalLM
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    return model.eval(), load_tokenizer(meta['tokenizer']), hf_model.eval(), hf_tok


def messages(conversation):
    return [dict(role='user', content=conversation)] if isinstance(conversation, str) else conversation


def test_exported_model_has_the_same_logits(exported):
    model, enc, hf_model, _ = exported
    assert type(hf_model).__name__ == 'LlamaForCausalLM'
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (4, model.config.block_size))  # every position and token
    with torch.no_grad():
        ours, theirs = model(ids)[0], hf_model(ids).logits
    assert (ours - theirs).abs().max() < 1e-4
    assert not torch.equal(ours[0], ours[1])  # (the rows differ: the comparison can fail)


def test_greedy_answers_are_identical(exported):
    model, enc, hf_model, hf_tok = exported
    end = enc.encode_single_token('<|end|>')
    tokens = prompt_tokens(enc, CONVERSATIONS[-1])  # one prompt: a multi-turn one
    out, lengths = model.generate([tokens], 20, temperature=0, stop_token=end)
    # no attention mask: HF then masks any pad id in the prompt, unless pad is eos (see export.llama_config)
    hf_out = hf_model.generate(torch.tensor([tokens]), max_new_tokens=20, do_sample=False,
                               output_logits=True, return_dict_in_generate=True)
    answer = hf_out.sequences[0, len(tokens):]
    assert answer.tolist() == out[0, :lengths[0]].tolist()
    with torch.no_grad():  # and the logits of each step are the project's
        ours = model(hf_out.sequences)[0][0, len(tokens) - 1:-1]
    assert (torch.cat(hf_out.logits) - ours).abs().max() < 1e-4
    # a batch of prompts of different lengths, left-padded by the tokenizer, as a user batches them
    batch = hf_tok.apply_chat_template([messages(c) for c in CONVERSATIONS], add_generation_prompt=True,
                                       padding=True, return_dict=True, return_tensors='pt')
    answers = hf_model.generate(**batch, max_new_tokens=20, do_sample=False)[:, batch['input_ids'].size(1):]
    out, lengths = model.generate([prompt_tokens(enc, c) for c in CONVERSATIONS], 20, temperature=0, stop_token=end)
    for row, ours, n in zip(answers.tolist(), out.tolist(), lengths.tolist()):
        assert row[:n] == ours[:n] and all(t == end for t in row[n:])  # (HF pads a finished row with <|end|>)


def random_text(rng, sentences):
    """Arbitrary Unicode: any code point, emoji, CJK, runs of whitespace, special tokens' text, prose."""
    pieces = [lambda: chr(rng.choice([rng.randrange(0xD800), rng.randrange(0xE000, 0x110000)])),
              lambda: rng.choice([' ', '\t', '\n', '\r\n', '\u00a0', '\u3000', '\u2028', '\x85']) * rng.randint(1, 5),
              lambda: rng.choice(['🙂', '👍🏽', '🇫🇷', '中文字', '日本語', '한국어', 'ß', 'ﬁ', 'é', "'s", "'LL", '3.14']),
              lambda: rng.choice(SPECIAL_TOKENS + ['<|end', '|>', '<|system|>']),
              lambda: rng.choice(sentences)]
    return ''.join(rng.choice(pieces)() for _ in range(rng.randint(1, 12)))


def assert_same_ids(enc, encode, decode, strings):
    for s in strings:
        ids = enc.encode(s, allowed_special='all')  # the special tokens' text is the special token
        assert encode(s) == ids, s
        assert decode(ids) == enc.decode(ids), s


def test_exported_tokenizer_gives_the_same_ids(exported):
    _, enc, _, hf_tok = exported
    sentences = [s for doc in world.corpus(world.make_world(0), 220) for s in doc.split('. ')][:1000]
    rng = random.Random(0)
    strings = sentences + [random_text(rng, sentences) for _ in range(1000)]
    assert_same_ids(enc, lambda s: hf_tok.encode(s, add_special_tokens=False),
                    lambda ids: hf_tok.decode(ids), strings)
    assert hf_tok.convert_tokens_to_ids(SPECIAL_TOKENS) == [enc.encode_single_token(s) for s in SPECIAL_TOKENS]


@pytest.mark.parametrize('pattern', [SPLIT_PATTERN, r50k_pat_str], ids=['project', 'gpt2'])
def test_merges_reproduce_a_larger_bpe(pattern):
    """The tiny chain's BPE has few merges: a larger one, with merges of multi-byte characters and of
    whitespace runs, through export.tokenizer_json alone; split with the project's pattern, and with
    tiktoken's gpt2 pattern (the 'gpt2' tokenizer itself is a download, not possible in tests)."""
    rng = random.Random(1)
    sentences = [s for doc in world.corpus(world.make_world(0), 300) for s in doc.split('. ')]
    text = ' '.join(sentences) + ''.join(rng.choice(['中文字 ', 'été ', '    ', '\n\n', '🙂🙂 ', '  x = 1\n'])
                                         for _ in range(3000))
    ranks = train_bpe(text, 1000, SPLIT_PATTERN, progress=False)
    enc = tiktoken.Encoding('test', pat_str=pattern, mergeable_ranks=ranks,
                            special_tokens={s: len(ranks) + i for i, s in enumerate(SPECIAL_TOKENS)})
    tok = Tokenizer.from_str(json.dumps(export.tokenizer_json(enc)))
    strings = [random_text(rng, sentences) for _ in range(1000)]
    assert_same_ids(enc, lambda s: tok.encode(s, add_special_tokens=False).ids,
                    lambda ids: tok.decode(ids, skip_special_tokens=False), strings)


def test_chat_template_renders_prompt_tokens(exported):
    _, enc, _, hf_tok = exported
    for conversation in CONVERSATIONS:
        ids = hf_tok.apply_chat_template(messages(conversation), tokenize=True, add_generation_prompt=True,
                                         return_dict=True)['input_ids']
        assert ids == prompt_tokens(enc, conversation)
    text = hf_tok.apply_chat_template(messages('Hi'), tokenize=False, add_generation_prompt=False)
    assert text == '<|endoftext|><|user|>Hi<|end|>'


def test_a_reward_model_is_refused_with_one_line(tiny_chain, tmp_path):
    model, meta = load_checkpoint(os.path.join(tiny_chain['sft'], 'ckpt.pt'), 'sft.py', scalar_head=True)
    save_checkpoint(str(tmp_path / 'reward' / 'ckpt.pt'), model, tokenizer=meta['tokenizer'], stage='reward')
    result = run_script('export.py', f'--ckpt={tmp_path / "reward"}', f'--out={tmp_path / "hf"}', check=False)
    assert result.returncode != 0 and result.stderr.startswith('error:') and 'reward or value model' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not os.path.exists(tmp_path / 'hf')
    assert os.listdir(tmp_path) == ['reward']  # no temporary folder left behind


def test_a_folder_that_is_not_an_export_is_not_replaced(tiny_chain, tmp_path, monkeypatch):
    (tmp_path / 'notes.txt').write_text('mine')  # --out naming, say, a checkpoint's folder by mistake
    monkeypatch.setattr(sys, 'argv', ['export.py', f'--ckpt={tiny_chain["sft"]}', f'--out={tmp_path}'])
    with pytest.raises(SystemExit, match='not an earlier export'):
        export.main()  # (in this process: the check comes before the checkpoint is read)
    assert os.listdir(tmp_path) == ['notes.txt']
