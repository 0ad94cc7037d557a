"""data/corpus.py on small files in the real corpora's formats (offline), and the presets of config/."""
import glob
import gzip
import json
import os
import subprocess
import sys

import pytest

from data import corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOT = '<|endoftext|>'


def run(*args):
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert result.returncode == 0, f'{args} failed:\n{result.stdout}\n{result.stderr}'
    return result.stdout


def written(path):
    """The documents of a file that corpus.py wrote, each checked to be followed by an <|endoftext|> line."""
    with open(path, encoding='utf-8', newline='') as f:
        text = f.read()
    assert text.endswith(f'\n{EOT}\n') and '\r' not in text
    return text[:-len(f'\n{EOT}\n')].split(f'\n{EOT}\n')


def error(tmp_path, monkeypatch, *args):
    """The error that corpus.main() exits with, in-process (a subprocess would import torch again)."""
    monkeypatch.setattr(sys, 'argv', ['data/corpus.py', *args, f'--out_dir={tmp_path / "out"}'])
    with pytest.raises(SystemExit) as e:
        corpus.main()
    assert [p for p in glob.glob(str(tmp_path / 'out' / '**'), recursive=True) if os.path.isfile(p)] == []
    return str(e.value.code)


SHAKESPEARE = 'First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n'
STORIES = ['One day, a little girl named Lily found a needle in her room.',
           'Tom had a big red ball.\n\nHe liked it.', 'Once upon a time, there was a café.']
C4 = [{'text': 'Beginners BBQ Class Taking Place in Missoula!\nDo you want to get better at making BBQ?',
       'timestamp': '2019-04-25T12:57:54Z', 'url': 'https://example.com/bbq'},
      {'text': '   ', 'timestamp': '2019-04-25T12:57:54Z', 'url': 'https://example.com/empty'},
      {'text': 'Discussion in \u2018Mac OS X Lion (10.7)\u2019 started by \u65e5\u672c.', 'url': 'https://example.com'}]


def write_gz(path, lines):
    with gzip.open(path, 'wt', encoding='utf-8') as f:
        f.writelines(line + '\n' for line in lines)


def test_corpora_in_each_format_are_written_and_prepared(tmp_path):
    (tmp_path / 'input.txt').write_text(SHAKESPEARE, encoding='utf-8')
    stories = '\r\n'.join(f'{story}\r\n{EOT}' for story in STORIES).replace('\n\n', '\r\n\r\n')  # CRLF lines
    (tmp_path / 'TinyStories-valid.txt').write_bytes(stories.encode('utf-8'))
    write_gz(tmp_path / 'c4-train.00000-of-01024.json.gz', [json.dumps(record) for record in C4])
    out = tmp_path / 'raw'
    stdout = run('data/corpus.py', '--name=shakespeare', f'--file={tmp_path / "input.txt"}', f'--out_dir={out}')
    assert written(out / 'shakespeare.txt') == [SHAKESPEARE.strip()]
    assert '1 documents' in stdout and f'--text_files={out / "shakespeare.txt"} --tokenizer=gpt2' in stdout
    run('data/corpus.py', '--name=tinystories', f'--file={tmp_path / "TinyStories-valid.txt"}', f'--out_dir={out}',
        '--max_docs=2')
    assert written(out / 'tinystories.txt') == STORIES[:2]
    stdout = run('data/corpus.py', '--name=c4', f'--file={tmp_path / "c4-train.00000-of-01024.json.gz"}',
                 f'--out_dir={out}')
    assert written(out / 'c4.txt') == [C4[0]['text'], C4[2]['text']]  # (an empty text is no document)
    assert '--out_dir=out/data/c4' in stdout
    data = tmp_path / 'data'
    run('data/prepare.py', f'--text_files={out / "shakespeare.txt"},{out / "tinystories.txt"},{out / "c4.txt"}',
        '--tokenizer=bpe', '--vocab_size=300', f'--out_dir={data}')
    assert os.path.getsize(data / 'train.bin') > 0
    with open(data / 'meta.json') as f:
        assert json.load(f)['documents'] == 5


def test_download_is_kept(tmp_path, capsys):
    (tmp_path / 'input.txt').write_text(SHAKESPEARE, encoding='utf-8')
    path = str(tmp_path / 'download' / 'input.txt')
    corpus.download((tmp_path / 'input.txt').as_uri(), path)
    assert open(path, encoding='utf-8').read() == SHAKESPEARE and not os.path.exists(path + '.tmp')
    (tmp_path / 'input.txt').write_text('changed', encoding='utf-8')
    corpus.download((tmp_path / 'input.txt').as_uri(), path)
    assert open(path, encoding='utf-8').read() == SHAKESPEARE and 'downloaded before' in capsys.readouterr().out


def test_malformed_files_name_file_and_line_and_write_nothing(tmp_path, monkeypatch):
    good = json.dumps(C4[0])
    cases = [([good, '{"text": "cut sh'], ':2: bad JSON'), ([good, '["a list"]'], ':2: not an object'),
             ([good, '', good, '{"url": "x"}'], ':4: not an object with a "text" string')]
    for i, (lines, message) in enumerate(cases):
        path = tmp_path / f'c4-{i}.json.gz'
        write_gz(path, lines)
        assert f'{path}{message}' in error(tmp_path, monkeypatch, '--name=c4', f'--file={path}')
    path = tmp_path / 'cut.json.gz'
    path.write_bytes(gzip.compress(('\n'.join([good] * 50) + '\n').encode())[:-30])  # a download cut short
    assert 'not a whole gzip file' in error(tmp_path, monkeypatch, '--name=c4', f'--file={path}')
    path.write_bytes(b'{"text": "not gzipped"}\n')
    assert f'{path}:1: not a whole gzip file' in error(tmp_path, monkeypatch, '--name=c4', f'--file={path}')
    path = tmp_path / 'latin1.txt'
    path.write_bytes('line one\ncaf\u00e9\n'.encode('latin-1'))
    assert f'{path}:2: not UTF-8' in error(tmp_path, monkeypatch, '--name=mytext', f'--file={path}')
    path.write_bytes(f'\n{EOT}\n  \n'.encode())
    assert 'no text' in error(tmp_path, monkeypatch, '--name=mytext', f'--file={path}')
    assert 'name must be one of' in error(tmp_path, monkeypatch, '--name=nonesuch', '--file=')
    assert 'not found' in error(tmp_path, monkeypatch, '--name=c4', f'--file={tmp_path / "missing.json.gz"}')


@pytest.mark.parametrize('preset', sorted(glob.glob(os.path.join(ROOT, 'config', '*.py'))))
def test_presets_parse_for_pretrain(preset):
    import pretrain
    from model import configure
    config = configure(dict(vars(pretrain)), [preset])  # (an unknown key or a wrong type exits)
    assert config['n_embd'] % config['n_head'] == 0 and config['n_embd'] // config['n_head'] % 2 == 0  # (RoPE pairs)
