"""data/prepare.py streams text files: the documents it reads, the BPE sample it takes, the tokens it
writes (the same for any number of worker processes), and a peak memory that does not grow with the corpus."""
import itertools
import json
import os
import sys

import numpy as np
import pytest

from conftest import run_script
from data.prepare import bpe_sample, read_documents
from model import load_tokenizer

EOT = '<|endoftext|>'


def write_corpus(path, n_chars, seed):
    """About n_chars characters of pseudo-random words in sentences, lines and documents (numpy draws
    the words 200,000 at a time: a 30 MB file takes a fraction of a second)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list('abcdefghijklmnopqrstuvwxyz'))
    words = [''.join(rng.choice(letters, rng.integers(1, 9))) + ' ' for _ in range(5000)]
    words = np.array(words + ['.\n'] * 200 + [f'.\n{EOT}\n'] * 20, dtype=object)  # ~1,300 characters a document
    with open(path, 'w') as f:
        written = 0
        while written < n_chars:
            text = ''.join(words[rng.integers(0, len(words), 200_000)])
            f.write(text)
            written += len(text)


def test_documents_end_at_eot_lines_with_a_bom_crlf_and_empty_files(tmp_path):
    files = {'stories.txt': b'\xef\xbb\xbfOne.\r\nTwo lines.\r\n<|endoftext|>\r\n\r\n \t<|endoftext|> \r\n'
                            b'Caf\xc3\xa9 <|endoftext|> stays text.\n  <|endoftext|>\t\nLast, no newline',
             'book.txt': b'\n  A whole book:\n\none document.\n\n',
             'empty.txt': b''}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    docs = read_documents([str(tmp_path / name) for name in files])
    assert list(docs) == ['One.\nTwo lines.', 'Caf\u00e9 <|endoftext|> stays text.', 'Last, no newline',
                          'A whole book:\n\none document.']


def test_documents_stream_and_a_bad_byte_names_file_and_line(tmp_path):
    path = tmp_path / 'big.txt'
    path.write_bytes(b'first\n<|endoftext|>\n' + b'second\n' * 1000 + b'caf\xe9\n')
    docs = read_documents([str(path)])
    assert next(docs) == 'first'  # before the bad byte is read
    with pytest.raises(SystemExit) as e:
        next(docs)
    assert str(e.value.code) == f'error: {path}:1003: not UTF-8 text (invalid continuation byte)'


def noting(docs, read):
    """Yields the documents, appending each to the list read as it goes."""
    for doc in docs:
        read.append(doc)
        yield doc


def test_bpe_sample_is_the_start_of_the_joined_documents_and_reads_no_further():
    docs = ['ab', 'cde', '', 'f', 'ghij']
    for n_chars in range(1, 20):
        read = []
        assert bpe_sample(noting(docs, read), n_chars) == '\n'.join(docs)[:n_chars]
        assert len('\n'.join(read[:-1])) < n_chars  # the last document read was needed (or its newline was)


def test_tokens_are_each_document_after_an_eot_in_order_for_any_num_proc(tmp_path):
    docs = [[f'File {f}, story {i}: ' + 'word ' * (i % 50) + f'<|end|> and caf\u00e9 {i * f}.' for i in range(400)]
            for f in range(3)]
    paths = []
    for f, file_docs in enumerate(docs):
        paths.append(str(tmp_path / f'{f}.txt'))
        with open(paths[-1], 'w') as out:
            out.write(f'\n{EOT}\n'.join(file_docs))
    outputs = []
    for num_proc in (1, 2):  # chunks of 2,000 characters: many in flight, finishing out of order
        out_dir = tmp_path / f'out{num_proc}'
        argv = [f'--text_files={",".join(paths)}', '--vocab_size=300', f'--num_proc={num_proc}', f'--out_dir={out_dir}']
        run_script('-c', f'import sys; sys.argv = ["prepare"] + {argv!r}; from data import prepare; '
                  'prepare.CHUNK_CHARS = 2000; prepare.main()')
        outputs.append({name: (out_dir / name).read_bytes() for name in ('train.bin', 'val.bin', 'tokenizer.bpe')})
        assert not [name for name in os.listdir(out_dir) if name.endswith('.tmp')]
    assert outputs[0] == outputs[1]

    meta = json.load(open(out_dir / 'meta.json'))
    enc = load_tokenizer(meta['tokenizer'])
    expected = [t for doc in itertools.chain(*docs) for t in [enc.encode_single_token(EOT)] + enc.encode_ordinary(doc)]
    train, val = (np.fromfile(out_dir / f'{split}.bin', dtype=np.uint16) for split in ('train', 'val'))
    assert np.concatenate([train, val]).tolist() == expected
    assert len(val) == int(len(expected) * 0.05) and meta['documents'] == 1200
    assert (meta['train_tokens'], meta['val_tokens']) == (len(train), len(val))


def test_a_bad_file_late_in_the_stream_leaves_the_old_outputs(tmp_path):
    write_corpus(tmp_path / 'good.txt', 100_000, seed=0)
    (tmp_path / 'bad.txt').write_bytes(b'fine\n' * 10 + b'\xff\n')
    out_dir = tmp_path / 'out'
    run_script('data/prepare.py', f'--text_files={tmp_path / "good.txt"}', '--vocab_size=300', f'--out_dir={out_dir}')
    before = {name: (out_dir / name).read_bytes() for name in os.listdir(out_dir)}
    result = run_script('data/prepare.py', f'--text_files={tmp_path / "good.txt"},{tmp_path / "bad.txt"}', '--vocab_size=280',
                 '--bpe_train_chars=1000', f'--out_dir={out_dir}', check=False)  # (the sample ends before bad.txt)
    assert result.returncode != 0 and f'error: {tmp_path / "bad.txt"}:11: not UTF-8 text' in result.stderr
    assert 'Traceback' not in result.stderr
    assert {name: (out_dir / name).read_bytes() for name in os.listdir(out_dir)} == before  # (and no .tmp files)


# Runs a script and prints the peak resident memory in MB of it and of the processes it started.
PEAK_MEMORY = 'import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); ' \
              'print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)'


def test_peak_memory_does_not_grow_with_the_corpus(tmp_path):
    peaks, tokens = [], []
    for n_chars in (3_000_000, 30_000_000):
        path = tmp_path / f'{n_chars}.txt'
        write_corpus(path, n_chars, seed=n_chars)
        out_dir = tmp_path / str(n_chars)
        stdout = run_script('-c', PEAK_MEMORY, sys.executable, 'data/prepare.py', f'--text_files={path}', '--vocab_size=300',
                     '--bpe_train_chars=200000', '--num_proc=2', f'--out_dir={out_dir}').stdout
        peaks.append(float(stdout.split()[-1]))
        tokens.append(json.load(open(out_dir / 'meta.json'))['train_tokens'])
        os.remove(path)
    assert 9 < tokens[1] / tokens[0] < 11
    # The large corpus's tokens alone take ~45 MB (~22M of 2 bytes). The prepare.py that held the text and
    # the tokens in memory peaked at ~255 and ~380 MB here; streaming, both are ~240 MB (~225 MB is torch).
    assert peaks[1] < 1.1 * peaks[0] + 10, f'peak memory {peaks[0]:.0f} MB for 3 MB of text, {peaks[1]:.0f} MB for 30 MB'
