"""data/alpaca.py and data/hh_rlhf.py on small files in the original data sets' formats (offline)."""
import gzip
import json
import os
import subprocess
import sys

import pytest

from data import alpaca, hh_rlhf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, path, out_dir):
    return subprocess.run([sys.executable, script, f'--file={path}', f'--out_dir={out_dir}'], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, 'OMP_NUM_THREADS': '1'})


def error(module, path, out_dir, monkeypatch):
    """The error that module.main() exits with, in-process: a subprocess would import torch again (2 s)."""
    monkeypatch.setattr(sys, 'argv', [module.__file__, f'--file={path}', f'--out_dir={out_dir}'])
    with pytest.raises(SystemExit) as e:
        module.main()
    return str(e.value.code)


def read_jsonl(path):
    with open(path, encoding='utf-8') as f:
        return [json.loads(line) for line in f]


ALPACA = [
    {'instruction': 'Give three tips for staying healthy.', 'input': '',
     'output': '1. Eat well.\n2. Exercise.\n3. Sleep enough.'},
    {'instruction': 'Translate to French.', 'input': 'Good morning, café!', 'output': ' Bonjour, café ! \n'},
    {'instruction': 'Name a color.', 'output': 'Blue.'},  # no "input" at all
]
ALPACA_MESSAGES = [
    [{'role': 'user', 'content': 'Give three tips for staying healthy.'},
     {'role': 'assistant', 'content': '1. Eat well.\n2. Exercise.\n3. Sleep enough.'}],
    [{'role': 'user', 'content': 'Translate to French.\n\nGood morning, café!'},
     {'role': 'assistant', 'content': 'Bonjour, café !'}],
    [{'role': 'user', 'content': 'Name a color.'}, {'role': 'assistant', 'content': 'Blue.'}],
]


@pytest.mark.parametrize('fmt', ['json', 'jsonl'])
def test_alpaca(tmp_path, fmt):
    path = tmp_path / f'alpaca_data.{fmt}'
    if fmt == 'json':  # as in stanford_alpaca: an indented array
        path.write_text(json.dumps(ALPACA, indent=4, ensure_ascii=False), encoding='utf-8')
    else:
        path.write_text(''.join(json.dumps(r) + '\n' for r in ALPACA), encoding='utf-8')
    result = run('data/alpaca.py', path, tmp_path / 'out')
    assert result.returncode == 0, result.stderr
    assert '3 demonstrations' in result.stdout
    assert read_jsonl(tmp_path / 'out' / 'sft.jsonl') == [{'messages': m} for m in ALPACA_MESSAGES]


GOOD = '{"instruction": "a", "input": "", "output": "b"}'
ARRAY = '[\n  ' + GOOD + ',\n  ' + GOOD + ',\n  {}\n]'  # the third record is bad: it starts on line 4


@pytest.mark.parametrize('name,content,where', [
    ('bad.json', ARRAY.replace('{}', '{"instruction": "a"}'), ':4 (record 2): not an object'),
    ('bad.json', ARRAY.replace('{}', '{"instruction": "a",\n "output": ""}'), ':4 (record 2): empty'),
    ('bad.json', ARRAY.replace('{}', '"text"'), ':4 (record 2): not an object'),
    ('bad.json', ARRAY.replace('{}', '{"instruction": "a", "input": 3, "output": "b"}'),
     ':4 (record 2): "instruction", "input" and "output" must be strings'),
    ('bad.json', ARRAY.replace('{}', '{"instruction": "a" "output": "b"}'), ':4: bad JSON'),
    ('bad.json', ARRAY.replace('{}', '{"instruction": "a\xff", "output": "b"}').encode('latin-1'), ':4: not UTF-8'),
    ('bad.jsonl', f'{GOOD}\n\n{GOOD[:-1]}\n', ':3: bad JSON'),
    ('bad.jsonl', f'{GOOD}\n{{"instruction": ["a"], "output": "b"}}\n', ':2: "instruction", "input"'),
    ('bad.jsonl', f'{GOOD}\n{GOOD}\n{{"input": "x", "output": "b"}}\n', ':3: not an object'),
    ('empty.json', '[]', ': no demonstrations'),
])
def test_alpaca_malformed(tmp_path, monkeypatch, name, content, where):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert error(alpaca, path, tmp_path / 'out', monkeypatch).startswith(f'error: {path}{where}')
    assert not (tmp_path / 'out').exists()


def test_alpaca_malformed_exits_nonzero(tmp_path):  # as a user runs it
    (tmp_path / 'bad.jsonl').write_text(f'{GOOD}\n{{"instruction": "a", "output": " "}}\n')
    result = run('data/alpaca.py', tmp_path / 'bad.jsonl', tmp_path / 'out')
    assert result.returncode == 1
    assert result.stderr == f'error: {tmp_path}/bad.jsonl:2: empty "instruction" or "output"\n'
    assert not (tmp_path / 'out').exists()


def conversation(*turns):
    return ''.join(f'\n\n{role}: {text}' for role, text in zip(['Human', 'Assistant'] * len(turns), turns))


HH = [  # (chosen, rejected) as in hh-rlhf: the whole conversation, each with its own last answer
    (conversation('What is 2+2?', '4'), conversation('What is 2+2?', '5, I think.')),
    (conversation('Hi!', ' Hello, how can I help? ', 'Tell me a joke.  ', 'Why did the chicken cross the road?'),
     conversation('Hi!', 'Hello, how can I help?', 'Tell me a joke.', 'No.')),
    (conversation('Hi!', 'Hello.', 'Bye.', 'Bye!'), conversation('Hi!', 'Go away.', 'Bye.', 'Ok.')),  # differ
    (conversation('Are you there?', 'Yes.'), conversation('Are you there?', 'Yes. ')),  # equal answers
    (conversation('Say nothing.', 'Fine.'), conversation('Say nothing.', '')),  # an empty answer
]
HH_RANKINGS = [
    {'prompt': 'What is 2+2?', 'answers': ['4', '5, I think.']},
    {'prompt': [{'role': 'user', 'content': 'Hi!'}, {'role': 'assistant', 'content': 'Hello, how can I help?'},
                {'role': 'user', 'content': 'Tell me a joke.'}],
     'answers': ['Why did the chicken cross the road?', 'No.']},
]


@pytest.mark.parametrize('name', ['train.jsonl', 'train.jsonl.gz'])
def test_hh_rlhf(tmp_path, name):
    text = ''.join(json.dumps(dict(chosen=c, rejected=r)) + '\n' for c, r in HH).encode()
    (tmp_path / name).write_bytes(gzip.compress(text) if name.endswith('.gz') else text)
    result = run('data/hh_rlhf.py', tmp_path / name, tmp_path / 'out')
    assert result.returncode == 0, result.stderr
    assert '2 ranked pairs' in result.stdout and 'skipped 3' in result.stdout
    assert read_jsonl(tmp_path / 'out' / 'rankings.jsonl') == HH_RANKINGS


PAIR = json.dumps(dict(chosen=conversation('a', 'b'), rejected=conversation('a', 'c')))


@pytest.mark.parametrize('name,content,where', [
    ('bad.jsonl', f'{PAIR}\n{PAIR[:-1]}\n', ':2: bad JSON'),
    ('bad.jsonl', f'{PAIR}\n\n{{"chosen": "x"}}\n', ':3: not an object'),
    ('bad.jsonl', f'{PAIR}\n[1, 2]\n', ':2: not an object'),
    ('bad.jsonl', f'{PAIR}\n{PAIR[:20]}\xff{PAIR[20:]}\n'.encode('latin-1'), ':2: not UTF-8'),
    ('bad.jsonl.gz', gzip.compress(f'{PAIR}\n{PAIR}\n{{"rejected": "x", "chosen": 1}}\n'.encode()),
     ':3: not an object'),
    ('bad.jsonl.gz', gzip.compress(f'{PAIR}\n'.encode())[:-10], ': '),  # cut short
    ('same.jsonl', json.dumps(dict(chosen=conversation('a', 'b'), rejected=conversation('a', 'b'))),
     ': no usable pairs (1 equal answers)'),
])
def test_hh_rlhf_malformed(tmp_path, monkeypatch, name, content, where):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert error(hh_rlhf, path, tmp_path / 'out', monkeypatch).startswith(f'error: {path}{where}')
    assert not (tmp_path / 'out').exists()


def test_hh_rlhf_malformed_exits_nonzero(tmp_path):  # as a user runs it
    (tmp_path / 'bad.jsonl').write_text(f'{PAIR}\n{{"chosen": "x"}}\n')
    result = run('data/hh_rlhf.py', tmp_path / 'bad.jsonl', tmp_path / 'out')
    assert result.returncode == 1
    assert result.stderr == f'error: {tmp_path}/bad.jsonl:2: not an object with string "chosen" and "rejected"\n'
    assert not (tmp_path / 'out').exists()


def test_download_is_kept(tmp_path, monkeypatch, capsys):  # a file:// url stands in for the web
    (tmp_path / 'alpaca_data.json').write_text(json.dumps(ALPACA))
    out_dir = tmp_path / 'out'
    for _ in range(2):
        monkeypatch.setattr(sys, 'argv', ['alpaca.py', f'--url={(tmp_path / "alpaca_data.json").as_uri()}',
                                          '--file=', f'--out_dir={out_dir}'])
        alpaca.main()
    assert 'downloaded before' in capsys.readouterr().out
    assert sorted(os.listdir(out_dir)) == ['alpaca_data.json', 'sft.jsonl']
    assert read_jsonl(out_dir / 'sft.jsonl') == [{'messages': m} for m in ALPACA_MESSAGES]
