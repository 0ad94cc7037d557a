"""
Makes SFT data from Alpaca-format demonstrations (Taori et al. 2023): a JSON array, or JSONL, of
{"instruction": ..., "input": ... (may be empty or absent), "output": ...} -> out/data/alpaca/sft.jsonl,
one {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]} per line; a non-empty input
follows the instruction after a blank line.

  python data/alpaca.py                                    # download Stanford Alpaca (52k, 22 MB)
  python data/alpaca.py --file=alpaca_data_cleaned.json    # a local file (JSON array or JSONL)
  python data/alpaca.py --url=https://.../data.jsonl --out_dir=out/data/other

A download is kept in out_dir and not fetched again. A malformed record is an error (file:line).
"""
import json
import os
import re
import shutil
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project root
import model
from data import formats                   # noqa: E402

# -----------------------------------------------------------------------------
url = 'https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/main/alpaca_data.json'
file = ''                  # a local JSON array or JSONL file; empty: download url into out_dir first
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
    """[(where, record)] from a JSON array or from JSONL; where is 'file:line' for error messages."""
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
        return [(f'{path}:{n}', loads(s, path, n)) for n, s in enumerate(text.split('\n'), 1) if s.strip()]
    records, decoder, pos, line, counted = [], json.JSONDecoder(), text.index('[') + 1, 1, 0
    for i, record in enumerate(loads(text, path)):  # decode the records again, one by one, for their lines
        pos = re.compile(r'[\s,]*').match(text, pos).end()
        line, counted = line + text.count('\n', counted, pos), pos
        records.append((f'{path}:{line} (record {i})', record))
        pos = decoder.raw_decode(text, pos)[1]
    return records


def demonstration(record, where):
    """The record as a list of messages; a malformed one is an error."""
    if not isinstance(record, dict) or 'instruction' not in record or 'output' not in record:
        sys.exit(f'error: {where}: not an object with "instruction" and "output"')
    if not all(isinstance(record.get(key, ''), str) for key in ('instruction', 'input', 'output')):
        sys.exit(f'error: {where}: "instruction", "input" and "output" must be strings')
    instruction, context, output = (record.get(key, '').strip() for key in ('instruction', 'input', 'output'))
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
    out = os.path.join(out_dir, 'sft.jsonl')
    formats.write_jsonl(out, [dict(messages=m) for m in demos])
    print(f'{out}: {len(demos):,} demonstrations from {path}')


if __name__ == '__main__':
    main()
