"""
Makes SFT data from Alpaca-format demonstrations (Taori et al. 2023): a JSON array, or JSONL, of
{"instruction": ..., "input": ... (may be empty or absent), "output": ...} -> <out_dir>/sft.jsonl,
one {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]} per line; a non-empty input
follows the instruction after a blank line. A malformed record is an error (file:line).

  python data/alpaca.py                                    # download Stanford Alpaca (52k, 22 MB)
  python data/alpaca.py --file=alpaca_data_cleaned.json    # a local file (JSON array or JSONL)
  python data/alpaca.py --url=https://.../data.jsonl --out_dir=out/data/other
"""
import json
import os
import re
import shutil
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project root
import model                   # noqa: E402
from data import formats        # noqa: E402

# -----------------------------------------------------------------------------
url = 'https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/main/alpaca_data.json'
file = ''                  # a JSON array or JSONL file; empty: url, downloaded once to out_dir
out_dir = 'out/data/alpaca'
# -----------------------------------------------------------------------------


def download(url, path):
    if os.path.exists(path):
        print(f'{path}: downloaded before')
        return
    print(f'downloading {url} to {path}')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(path + '.tmp', 'wb') as f:
            shutil.copyfileobj(r, f)
    except OSError as e:
        sys.exit(f'error: {url}: {e} (offline? fetch it elsewhere and pass --file=PATH)')
    os.replace(path + '.tmp', path)


def loads(text, path, line=None):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        sys.exit(f'error: {path}:{line or e.lineno}: bad JSON ({e.msg}, column {e.colno})')


def read_records(path):
    """[(where, record)] from a JSON array or JSONL; where is 'file:line' for error messages."""
    if not os.path.isfile(path):
        sys.exit(f'error: {path} not found')
    with open(path, 'rb') as f:
        raw = f.read()
    try:
        text = raw.decode('utf-8-sig')
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b'\n') + 1
        sys.exit(f'error: {path}:{line}: not UTF-8 text ({e.reason})')
    if not text.lstrip().startswith('['):  # JSONL
        return [(f'{path}:{n}', loads(s, path, n))
                for n, s in enumerate(text.split('\n'), 1) if s.strip()]
    records, decoder, pos, line, counted = [], json.JSONDecoder(), text.index('[') + 1, 1, 0
    for i, record in enumerate(loads(text, path)):  # decoded again one by one, for their lines
        pos = re.compile(r'[\s,]*').match(text, pos).end()
        line, counted = line + text.count('\n', counted, pos), pos
        records.append((f'{path}:{line} (record {i})', record))
        pos = decoder.raw_decode(text, pos)[1]
    return records


def demonstration(record, where):
    """The record as a list of messages; a malformed one is an error."""
    keys = ('instruction', 'input', 'output')
    if not isinstance(record, dict) or 'instruction' not in record or 'output' not in record:
        sys.exit(f'error: {where}: not an object with "instruction" and "output"')
    if not all(isinstance(record.get(key, ''), str) for key in keys):
        sys.exit(f'error: {where}: "instruction", "input" and "output" must be strings')
    instruction, context, output = (record.get(key, '').strip() for key in keys)
    if not instruction or not output:
        sys.exit(f'error: {where}: empty "instruction" or "output"')
    return [dict(role='user', content=f'{instruction}\n\n{context}' if context else instruction),
            dict(role='assistant', content=output)]


def main():
    model.configure(globals())
    path = file or os.path.join(out_dir, os.path.basename(url))
    if not file:
        download(url, path)
    demos = [demonstration(record, where) for where, record in read_records(path)]
    if not demos:
        sys.exit(f'error: {path}: no demonstrations')
    os.makedirs(out_dir, exist_ok=True)
    formats.write_jsonl(out := os.path.join(out_dir, 'sft.jsonl'), [dict(messages=m) for m in demos])
    print(f'{out}: {len(demos):,} demonstrations from {path}')


if __name__ == '__main__':
    main()
