"""data/alpaca.py and data/hh_rlhf.py on small files in the original data sets' formats (offline), and the
whole chain of real data (DATA=real bash run.sh) on such files, with its report card scored by a judge RM."""
import gzip
import json
import math
import os
import random
import re
import subprocess
import sys

import pytest

import bestofk
import model
import report
from data import alpaca, corpus, hh_rlhf, tasks, world, world_as_real
from data.prepare import read_documents

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


PARTS = ['rankings', 'judge_rankings', 'eval_rankings']  # the proxy half, the judge half, held out


@pytest.mark.parametrize('name', ['train.jsonl', 'train.jsonl.gz'])
def test_hh_rlhf(tmp_path, name):
    text = ''.join(json.dumps(dict(chosen=c, rejected=r)) + '\n' for c, r in HH).encode()
    (tmp_path / name).write_bytes(gzip.compress(text) if name.endswith('.gz') else text)
    result = run('data/hh_rlhf.py', tmp_path / name, tmp_path / 'out')
    assert result.returncode == 0, result.stderr
    assert '2 ranked pairs' in result.stdout and 'skipped 3' in result.stdout
    parts = {part: read_jsonl(tmp_path / 'out' / f'{part}.jsonl') for part in PARTS}
    assert sorted((r for rows in parts.values() for r in rows), key=str) == sorted(HH_RANKINGS, key=str)
    assert read_jsonl(tmp_path / 'out' / 'prompts.jsonl') == [{'prompt': r['prompt']} for r in parts['rankings']
                                                              if isinstance(r['prompt'], str)]


def first_question(ranking):
    return ranking['prompt'] if isinstance(ranking['prompt'], str) else ranking['prompt'][0]['content']


def test_hh_rlhf_splits_by_the_first_question(tmp_path):
    """The proxy half, the judge half and the held-out pairs share no first question (so a prompt's pairs,
    and conversations that open alike, never straddle), hold every usable pair, and are each about their share;
    the prompt files hold each one-turn prompt of their part once."""
    hh_file = write_hh(tmp_path / 'train.jsonl.gz')
    result = run('data/hh_rlhf.py', hh_file, tmp_path / 'out')
    assert result.returncode == 0, result.stderr
    parts = {part: read_jsonl(tmp_path / 'out' / f'{part}.jsonl') for part in PARTS}
    firsts = {part: {first_question(r) for r in rows} for part, rows in parts.items()}
    assert not (firsts['rankings'] & firsts['judge_rankings'] or firsts['rankings'] & firsts['eval_rankings']
                or firsts['judge_rankings'] & firsts['eval_rankings'])
    n = sum(map(len, parts.values()))
    assert n == len(HH_FIXTURE)
    for part, share in zip(PARTS, (0.45, 0.45, 0.1)):
        assert abs(len(parts[part]) / n - share) < 0.1, (part, len(parts[part]))
    for prompts, part in (('prompts', 'rankings'), ('eval_prompts', 'eval_rankings')):
        one_turn = [r['prompt'] for r in parts[part] if isinstance(r['prompt'], str)]
        assert [row['prompt'] for row in read_jsonl(tmp_path / 'out' / f'{prompts}.jsonl')] == list(dict.fromkeys(one_turn))
    assert f'{len(parts["judge_rankings"])} pairs  the judge RM only' in result.stdout


def test_prompt_files_hold_one_turn_prompts(tmp_path):
    (tmp_path / 'prompts.jsonl').write_text('{"prompt": "Hi!"}\n{"prompt": [{"role": "user", "content": "Hi!"}]}\n')
    with pytest.raises(SystemExit) as e:
        hh_rlhf.read_prompts(str(tmp_path / 'prompts.jsonl'))
    assert str(e.value.code) == f'error: {tmp_path}/prompts.jsonl:2: "prompt" must be a text'
    (tmp_path / 'empty.jsonl').write_text('')
    with pytest.raises(SystemExit) as e:
        hh_rlhf.read_prompts(str(tmp_path / 'empty.jsonl'))
    assert str(e.value.code).startswith(f'error: {tmp_path}/empty.jsonl: no prompts')


PAIR = json.dumps(dict(chosen=conversation('a', 'b'), rejected=conversation('a', 'c')))


@pytest.mark.parametrize('name,content,where', [
    ('bad.jsonl', f'{PAIR}\n{PAIR[:-1]}\n', ':2: bad JSON'),
    ('bad.jsonl', f'{PAIR}\n\n{{"chosen": "x"}}\n', ':3: not an object'),
    ('bad.jsonl', f'{PAIR}\n[1, 2]\n', ':2: not an object'),
    ('bad.jsonl', f'{PAIR}\n{PAIR[:20]}\xff{PAIR[20:]}\n'.encode('latin-1'), ':2: not UTF-8'),
    ('bad.jsonl.gz', gzip.compress(f'{PAIR}\n{PAIR}\n{{"rejected": "x", "chosen": 1}}\n'.encode(), mtime=0),
     ':3: not an object'),
    ('bad.jsonl.gz', gzip.compress(f'{PAIR}\n'.encode(), mtime=0)[:-10], ': '),  # cut short
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


# ----------------------------------------------------------------------------- the chain of real data on fixtures
# Small files in the real formats, made from a few templates: they need not read well, only be parsed as the
# real ones are, and give each part of the split enough pairs.
PEOPLE = ['Ada', 'Ben', 'Cleo', 'Dev', 'Eli', 'Fay', 'Gus', 'Hana']
PLACES = ['garden', 'river', 'kitchen', 'library', 'market', 'harbour', 'forest', 'school']
DEEDS = ['walked to', 'painted', 'cleaned', 'sang in', 'read about', 'visited', 'drew', 'talked about']
TOPICS = ['bake bread', 'plant a tree', 'fix a bike', 'learn a song', 'write a letter', 'fold a shirt',
          'cross a river', 'pack a bag', 'light a fire', 'paint a wall', 'catch a fish', 'hurt my neighbour',
          'steal a car', 'cheat at cards']


def corpus_text(n_docs=260):
    """Short documents of plain prose, as C4's "text" fields hold."""
    rng = random.Random(0)
    return [' '.join(f'{rng.choice(PEOPLE)} {rng.choice(DEEDS)} the {rng.choice(PLACES)} with {rng.choice(PEOPLE)}.'
                     for _ in range(rng.randint(3, 8))) for _ in range(n_docs)]


def alpaca_records():
    """Short answers, and long ones (as real demonstrations are): a briefly trained model's answers may not end."""
    return [dict(instruction=f'How do I {topic}?', input='' if i % 3 else f'I am in the {place}.',
                 output=f'Ask {person}.' if i % 2 else f'Go slowly, with {person}. ' + (RAMBLE if i % 4 == 0 else ''))
            for i, (topic, place, person) in enumerate(zip(TOPICS[:11] * 3, PLACES * 5, PEOPLE * 5))]


HH_FIXTURE = (  # one-turn requests (harmful ones get a refusal as the chosen answer), two-turn ones, and repeats
    [(conversation(f'Can {p} {t} in the {place}?', f'Yes, {p} can {t} there with care.'),
      conversation(f'Can {p} {t} in the {place}?', 'No idea, go away.')) for p in PEOPLE for t, place in
     zip(TOPICS[:11], PLACES * 2) if (len(p) + len(t)) % 2]
    + [(conversation(f'How would {p} {t}?', 'I will not help with that; it would hurt someone.'),
        conversation(f'How would {p} {t}?', f'Easy: {p} just does it at night.')) for p in PEOPLE for t in TOPICS[11:]]
    + [(conversation(f'Hello, I am {p}.', 'Hi! How can I help?', f'Where is the {place}?', f'The {place} is near.'),
        conversation(f'Hello, I am {p}.', 'Hi! How can I help?', f'Where is the {place}?', 'Who cares.'))
       for p, place in zip(PEOPLE, PLACES)])
HH_FIXTURE += [HH_FIXTURE[0], HH_FIXTURE[-1]]  # a repeated pair goes where its first copy went
# where real data bites: long multi-turn conversations and long one-turn prompts (longer than the context)
RAMBLE = ' '.join(f'{p} {d} the {place} and then the {place} again.' for p, d, place in zip(PEOPLE, DEEDS, PLACES))
HH_FIXTURE += (
    [(conversation(f'Hi, I am {p}.', RAMBLE, f'Tell me about the {place}.', RAMBLE, 'Why?', f'The {place} is old.'),
      conversation(f'Hi, I am {p}.', RAMBLE, f'Tell me about the {place}.', RAMBLE, 'Why?', 'Nobody knows.'))
     for p, place in zip(PEOPLE, PLACES[::-1])]
    + [(conversation(f'{p} says: {RAMBLE} What do you think of {t}?', 'It is fine.'),
        conversation(f'{p} says: {RAMBLE} What do you think of {t}?', 'Go away.'))
       for p, t in zip(PEOPLE, TOPICS[3:])])


def write_hh(path):
    path.write_bytes(gzip.compress(''.join(json.dumps(dict(chosen=c, rejected=r)) + '\n' for c, r in HH_FIXTURE).encode()))
    return path


def write_fixtures(tmp_path):
    """{env var: path} of a C4-style .json.gz corpus and a plain text without separators (as wiki_demo.txt: a
    line per article, no blank line, no <|endoftext|>), an Alpaca JSON array and an HH-RLHF .jsonl.gz."""
    c4, plain = tmp_path / 'c4-train.00000-of-01024.json.gz', tmp_path / 'wiki.txt'
    c4.write_bytes(gzip.compress(''.join(json.dumps(dict(text=t, url='x')) + '\n' for t in corpus_text()).encode()))
    plain.write_text(''.join(' '.join(corpus_text(150)[i::3]) + '\n' for i in range(3)), encoding='utf-8')
    alpaca_file = tmp_path / 'alpaca_data.json'
    alpaca_file.write_text(json.dumps(alpaca_records(), indent=4))
    return dict(CORPUS_FILE=f'{c4},{plain}', ALPACA_FILE=str(alpaca_file),
                HH_FILE=str(write_hh(tmp_path / 'train.jsonl.gz')))


def run_real_chain(out, files):
    env = {**os.environ, 'PYTHON': sys.executable, 'OUT': str(out), 'DATA': 'real', 'PRESET': 'config/real_tiny',
           'OMP_NUM_THREADS': '1', **files}
    result = subprocess.run(['bash', 'run.sh'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    return result.stdout


def card(report):
    """The report card's tables: {first cell: {column: cell}}, over every table."""
    rows, header = {}, None
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')] if line.startswith('|') else None
        if cells is None or set(cells) == {'---'}:
            header = header if cells else None
        elif header is None:
            header = cells
        else:
            rows[cells[0]] = dict(zip(header, cells))
    return rows


def numbers(cell):
    return [float(x) for x in cell.split(' ± ')]


STAGES = ['corpus', 'data', 'alpaca', 'hh_rlhf', 'pretrain', 'sft', 'reward', 'judge', 'bestofk', 'dpo', 'rlhf', 'report']
POLICIES = ['pretrain', 'sft', 'bestofk', 'dpo', 'rlhf']


def test_the_real_chain_on_fixtures_then_the_report_resumes(tmp_path):
    out, files = tmp_path / 'out', write_fixtures(tmp_path)
    stdout = run_real_chain(out, files)
    assert re.findall(r'^== (\w+): done', stdout, flags=re.M) == STAGES
    for stage in POLICIES + ['reward', 'judge']:
        assert (out / stage / 'ckpt.pt').exists(), stage
    report = (out / 'report.md').read_text()
    rows = card(report)
    for stage in POLICIES:
        row = rows[stage]
        judge, win = numbers(row['judge RM score ± se']), numbers(row['win vs SFT ± se'])
        assert all(map(math.isfinite, judge + win + numbers(row['KL to SFT']))) and judge[1] >= 0, row
        assert 0 <= win[0] <= 1 and 1 <= float(row['length']) <= 16, row
        assert row['proxy RM score'] == '-' or math.isfinite(float(row['proxy RM score']))
    assert rows['sft']['win vs SFT ± se'] == '0.500 ± 0.000' and rows['sft']['KL to SFT'] == '0.00'
    assert rows['bestofk']['answers sampled'] == '16' and rows['rlhf']['answers sampled'] == '16'
    # prompts longer than the context (block_size 128 less 16 new tokens): dropped and counted by every stage
    enc, hh = model.load_tokenizer(str(out / 'data' / 'text' / 'tokenizer.bpe')), out / 'data' / 'hh_rlhf'
    fits = {name: model.fitting(enc, [r['prompt'] for r in read_jsonl(hh / f'{name}.jsonl')], 128, 16, name)
            for name in ('rankings', 'judge_rankings', 'eval_rankings', 'prompts', 'eval_prompts')}
    for name, count in (('rankings', 2), ('judge_rankings', 1), ('prompts', 2)):  # reward, dpo; judge; bestofk, rlhf
        n = len(read_jsonl(hh / f'{name}.jsonl'))
        said = f'/{name}.jsonl: dropped {n - len(fits[name])} of {n} prompts longer than 112 tokens'
        assert len(fits[name]) < n and stdout.count(said) == count, name
    for rm in ('proxy', 'judge'):
        row = rows[f'{rm} ({out}/{"reward" if rm == "proxy" else rm})']
        assert 0 <= float(row['accuracy']) <= 1 and row['pairs'] == str(len(fits['eval_rankings']))
    assert report.count('### ') == 2 and f'{len(fits["eval_prompts"][:6])} held-out prompts' in report
    # answers that do not end: counted; the card says what it can conclude, with a win rate at equal length
    assert re.search(r'^round 1: kept \d+ best answers of 8 prompts', stdout, flags=re.M)
    for row in map(rows.get, POLICIES):
        assert 0 <= float(row['ended']) <= 1 and 0 <= numbers(row['win at equal length ± se'])[0] <= 1
    assert 'too close to chance to rank the stages' in report or 'so it may rank them' in report
    # plain text with no separators: cut into documents of at most 10,000 characters
    documents = int(re.search(r'raw/\w+\.txt: ([\d,]+) documents', stdout).group(1).replace(',', ''))
    assert documents >= len(corpus_text()) + 3

    # after a kill, or when one stage changed, the report answers again only with the checkpoints it has not seen
    cached = json.loads((out / 'report' / 'dpo.json').read_text())
    cached['result']['length'] = 99.0  # (a mark: this row must come from the file)
    (out / 'report' / 'dpo.json').write_text(json.dumps(cached))
    os.utime(out / 'rlhf' / 'ckpt.pt')  # PPO ran again (a new modification time): its answers are stale
    os.utime(out / 'rlhf' / '.done')
    stdout = run_real_chain(out, files)
    assert re.findall(r'^== (\w+): done', stdout, flags=re.M) == ['report']
    again = card((out / 'report.md').read_text())
    assert again['dpo']['length'] == '99.0'
    assert {stage for stage in POLICIES if f'{stage}: answered before' in stdout} == {'pretrain', 'sft', 'bestofk', 'dpo'}
    assert again['rlhf'] == rows['rlhf']  # answered again: the same draws, the same row

    # with no world there is no gold judge: the stages that answer prompts say which files to pass
    for script, args in (('report.py', [f'--out_dir={out}']),
                         ('rlhf.py', [f'--init_from={out}/sft', f'--ref_from={out}/sft', f'--reward_model={out}/reward',
                                      f'--out_dir={tmp_path}/no_prompts'])):
        result = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True,
                                env={**os.environ, 'OMP_NUM_THREADS': '1'})
        assert result.returncode == 1 and result.stderr.startswith('error: ') and '--prompt_file' in result.stderr
    assert not (tmp_path / 'no_prompts').exists()

    # a malformed input, or one where no prompt fits: one line naming the file (and line), no traceback, nothing written
    bad_prompts, bad_rankings, long_prompts = (tmp_path / f'{name}.jsonl' for name in ('bad', 'bad_rankings', 'long'))
    bad_prompts.write_text('{"prompt": "Hi?"}\n{"prompt": ["Hi?"]}\n')
    bad_rankings.write_text('{"prompt": "Hi?", "answers": ["a", "b"]}\n{"prompt": "Hi?", "answers": ["a"]}\n')
    long_prompts.write_text(json.dumps({'prompt': RAMBLE}) + '\n')
    for script, args, said in (
            ('rlhf.py', [f'--init_from={out}/sft', f'--ref_from={out}/sft', f'--reward_model={out}/reward',
                         f'--prompt_file={bad_prompts}', f'--eval_prompt_file={bad_prompts}'],
             f'{bad_prompts}:2: "prompt" must be a text'),
            ('reward.py', [f'--policy={out}/sft', f'--init_from={out}/sft', '--n_prompts=0', '--n_eval=0',
                           f'--rankings={bad_rankings}'], f'{bad_rankings}:2: "answers" must be a list'),
            ('bestofk.py', [f'--init_from={out}/sft', f'--reward_model={out}/reward', f'--prompt_file={long_prompts}',
                            f'--eval_prompt_file={long_prompts}', '--max_new_tokens=16'],
             f'{long_prompts}: all 1 prompts are longer than 112 tokens')):
        result = subprocess.run([sys.executable, script, *args, f'--out_dir={tmp_path}/bad'], cwd=ROOT,
                                capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'})
        assert result.returncode == 1 and result.stderr.startswith(f'error: {said}'), (script, result.stderr)
        assert 'Traceback' not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / 'bad').exists()


def test_the_world_in_the_formats_of_real_data_and_its_gold_check(tmp_path, monkeypatch):
    """data/world_as_real.py: the files read back as the world's corpus, demonstrations and ranked
    pairs; and its check counts a judge RM that agrees with gold, and one that does not, as such."""
    rankings = [dict(prompt='Tell me where Mira lives.', answers=['Mira lives in Sunvale.', 'Mira.', 'No.', 'I do not know.']),
                dict(prompt='Could you tell me a story about Leo?', answers=['Leo ran.', 'Leo', 'I will not.'])]
    (tmp_path / 'rankings.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rankings))
    monkeypatch.setattr(sys, 'argv', ['world_as_real.py', f'--rankings={tmp_path}/rankings.jsonl', '--n_docs=30',
                                      '--n_demos=40', f'--out_dir={tmp_path}/out'])
    world_as_real.main()
    w = world.make_world(0)
    assert list(read_documents([str(tmp_path / 'out' / 'corpus.txt')])) == world.corpus(w, 30, 0, 0.1)
    demos = [alpaca.demonstration(record, where) for where, record in alpaca.read_records(str(tmp_path / 'out' / 'alpaca.json'))]
    assert demos == [messages[:2] for messages in tasks.demonstrations(w, 40, 0.4, 0)]
    pairs = [hh_rlhf.ranking(*pair) for pair in hh_rlhf.read_pairs(str(tmp_path / 'out' / 'hh.jsonl.gz'))]
    assert pairs == [dict(prompt=rankings[0]['prompt'], answers=['Mira lives in Sunvale.', 'I do not know.']),
                     dict(prompt=rankings[0]['prompt'], answers=['Mira.', 'No.']),
                     dict(prompt=rankings[1]['prompt'], answers=['Leo ran.', 'I will not.'])]
    # the check: SFT's answers empty, the stage's good (demonstrations without a flaw), two samples a prompt
    prompts = [p for p in tasks.prompt_set(w, 'eval', 3) for _ in range(2)]
    good = [tasks.demonstration(w, p, random.Random(0)) for p in prompts]
    results = dict(sft=dict(answers=[''] * 6, judge=[0.0] * 6), stage=dict(answers=good, judge=[1.0] * 6))
    table, agree, n = world_as_real.gold_beside_judge(w, prompts, results, 2)
    assert table['sft'][1] == table['sft'][2] == (0.5, 0.0)
    assert table['stage'][0][0] > table['sft'][0][0] and table['stage'][2] == (1.0, 0.0) and agree == 1.0 and n > 0
    results['stage']['judge'] = [-1.0] * 6  # a judge RM that prefers the empty answers
    assert world_as_real.gold_beside_judge(w, prompts, results, 2)[1] == 0.0


# ----------------------------------------------------------------------------- real data where it bites
def test_one_rule_drops_and_counts_prompts_that_leave_no_room(enc, capsys):
    """model.fitting: texts, conversations and rankings whose prompt leaves `room` tokens in block_size are kept."""
    short, long_text = 'Where does Ada live?', ' '.join(['word'] * 100)
    talk = [dict(role='user', content='Hi.'), dict(role='assistant', content=long_text), dict(role='user', content='So?')]
    items = [short, long_text, talk, dict(prompt=short, answers=['a', 'b']), dict(prompt=talk, answers=['a', 'b'])]
    assert model.fitting(enc, items, 64, 16, 'f.jsonl') == [short, items[3]]
    assert capsys.readouterr().out == ('f.jsonl: dropped 3 of 5 prompts longer than 48 tokens '
                                       '(block_size 64 less 16 for the answer)\n')
    n = len(model.prompt_tokens(enc, short))
    assert model.fitting(enc, [short], n + 16, 16, 'f.jsonl') == [short] and capsys.readouterr().out == ''
    with pytest.raises(SystemExit) as e:  # none fits: one line saying what to change
        model.fitting(enc, [short], n + 15, 16, 'f.jsonl')
    assert str(e.value.code) == (f'error: f.jsonl: all 1 prompts are longer than {n - 1} tokens (block_size '
                                 f'{n + 15} less 16 for the answer): raise block_size (pretrain.py) or lower --max_new_tokens')
    assert model.fitting(enc, [], 64, 16, 'f.jsonl') == []


def test_best_of_k_skips_and_counts_prompts_with_no_ended_answer():
    inf = float('inf')
    scores = [-inf, -inf, 0.3, -inf, -inf, -inf]  # prompts a, b, c, K = 2: only b has an answer that ended
    assert bestofk.unended(scores, 2) == 2
    assert bestofk.select_best(['a', 'b', 'c'], ['a1', 'a2', 'b1', 'b2', 'c1', 'c2'], scores, 2) == [('b', 'b1')]
    line = bestofk.kept_line(0, [('b', 'b1')], 3, 2, 2, 16, None)
    assert line == ('round 1: kept 1 best answers of 3 prompts (the RM chose them); skipped 2 prompts none of '
                    'whose 2 answers ended within max_new_tokens=16')
    nothing = bestofk.kept_line(1, [], 3, 3, 2, 16, None).splitlines()
    assert len(nothing) == 2 and nothing[1].startswith('round 2: nothing to fine-tune on') and '--max_new_tokens' in nothing[1]


def test_plain_text_without_separators_is_cut_into_documents(tmp_path, monkeypatch, capsys):
    text = ''.join(f'Article {i}. ' + ' '.join(f'Sentence {j} of {i}.' for j in range(600)) + '\n' for i in range(3))
    pieces = corpus.pieces(text.strip(), 1000)
    assert all(len(p) <= 1000 for p in pieces) and len(pieces) > len(text) // 1000
    assert ' '.join(pieces).split() == text.split()  # nothing lost, cut at spaces only
    assert all(p.endswith('.') for p in pieces)  # at sentence ends (no blank line or line end in reach)
    assert corpus.pieces('aaaaaa\n\nbb\ncc dd ee', 12) == ['aaaaaa', 'bb\ncc dd ee']  # the blank line first
    assert corpus.pieces('short', 0) == ['short'] == corpus.pieces('short', 10)
    (tmp_path / 'wiki.txt').write_text(text, encoding='utf-8')
    for key in ('file', 'name', 'max_doc_chars', 'out_dir'):  # (main sets them: restored after the test)
        monkeypatch.setattr(corpus, key, getattr(corpus, key))
    monkeypatch.setattr(sys, 'argv', ['corpus.py', f'--file={tmp_path / "wiki.txt"}', '--name=wiki',
                                      '--max_doc_chars=2000', f'--out_dir={tmp_path}'])
    corpus.main()
    docs = list(read_documents([str(tmp_path / 'wiki.txt')]))
    assert len(docs) >= len(text) // 2000 and max(map(len, docs)) <= 2000
    assert f'{len(docs)} documents (at most 2,000 characters each)' in capsys.readouterr().out


def test_win_at_equal_length():
    """A judge that only likes shorter answers: the raw win rate is high for a stage that got shorter, its win
    rate at equal length is not; a stage that wins at every length keeps it; SFT against itself: 0.5 ± 0."""
    rng = random.Random(0)
    diffs = [rng.randint(-30, 5) for _ in range(400)]  # mostly shorter than SFT's answer
    shorter_wins = [1.0 if d < 0 else 0.0 for d in diffs]
    raw = sum(shorter_wins) / len(diffs)
    lc, se = report.length_controlled_win(shorter_wins, diffs, samples=4)
    assert raw > 0.8 and lc < 0.5 and 0 < se < 0.2, (raw, lc, se)
    always = [1.0 if rng.random() < 0.8 else 0.0 for _ in diffs]
    lc, se = report.length_controlled_win(always, diffs, samples=4)
    assert abs(lc - 0.8) < 0.08 and se > 0, lc
    assert report.length_controlled_win([0.5] * 40, [0] * 40, samples=4) == (0.5, 0.0)


def result_row(win, lc, length, ended):
    return dict(win=(win, 0.03), lc_win=(lc, 0.03), length=length, ended=[True] * ended + [False] * (10 - ended))


def test_the_card_ranks_stages_only_with_a_judge_above_chance():
    results = dict(sft=result_row(0.5, 0.5, 80, 9), dpo=result_row(0.6, 0.58, 82, 9), rlhf=result_row(0.71, 0.45, 12, 10))
    near = report.verdict(results, dict(acc_label=0.55, label_pairs=200), 16)
    assert 'too close to chance to rank the stages' in near[0] and 'rlhf' not in near[0]
    far = report.verdict(results, dict(acc_label=0.62, label_pairs=400), 16)
    assert 'so it may rank them' in far[0] and far[0].index('dpo 0.580') < far[0].index('rlhf 0.450')
    assert any(line.startswith("rlhf: answers of 12 tokens against SFT's 80") for line in far)  # length moved
    assert report.accuracy_interval(0.6, 400) == pytest.approx((0.552, 0.648), abs=1e-3)
    assert 'ranks no stage' in report.verdict(results, None, 16)[0]
    seldom = report.verdict(dict(results, bestofk=result_row(0.5, 0.5, 16, 2)), None, 16)
    assert seldom[-1].startswith('bestofk: fewer than half of the answers end within max_new_tokens=16')
    rambling = report.verdict(dict(results, pretrain=result_row(0.2, 0.7, 160, 0)), dict(acc_label=0.62, label_pairs=400), 16)
    assert 'pretrain' not in rambling[0] and rambling[-1].startswith('pretrain: fewer than half')  # not ranked
    assert not any(line.startswith('pretrain: answers of') for line in rambling)


REALDATA = os.path.join(ROOT, '..', 'shared', 'realdata')


@pytest.mark.skipif(not os.path.isdir(REALDATA), reason='no ../shared/realdata (real public files) here')
def test_the_real_chain_on_the_real_files(tmp_path):
    """The chain of real data on real public files (config/real_tiny): to the end, each problem said in a line."""
    files = dict(CORPUS='c4wiki', CORPUS_FILE=','.join(os.path.join(REALDATA, f) for f in ('c4_demo.jsonl', 'wiki_demo.txt')),
                 ALPACA_FILE=os.path.join(REALDATA, 'alpaca_en_demo.json'),
                 HH_FILE=os.path.join(REALDATA, 'hh_harmless_test.jsonl.gz'))
    stdout = run_real_chain(tmp_path / 'out', files)
    assert re.findall(r'^== (\w+): done', stdout, flags=re.M) == STAGES
    assert int(re.search(r'c4wiki\.txt: ([\d,]+) documents', stdout).group(1).replace(',', '')) > 301  # wiki: cut
    assert re.search(r'/rankings\.jsonl: dropped [\d,]+ of 1,020 prompts longer than 112 tokens', stdout)
    assert re.search(r'^round 1: kept \d+ best answers', stdout, flags=re.M)
    text = (tmp_path / 'out' / 'report.md').read_text()
    assert '## What this card can say' in text and 'win at equal length ± se' in text
