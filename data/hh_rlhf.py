"""
Makes reward-model data from Anthropic's HH-RLHF preference pairs (Bai et al. 2022): JSONL lines (.jsonl or
.jsonl.gz) {"chosen": "\n\nHuman: ...\n\nAssistant: ...", "rejected": ...}, one conversation with two last
answers -> out/data/hh_rlhf/rankings.jsonl, one {"prompt": ..., "answers": [chosen, rejected]} per line (best
first). The prompt is a string for a single human turn, else a list of messages ending with the user's turn.

  python data/hh_rlhf.py                                  # download harmless-base/train.jsonl.gz
  python data/hh_rlhf.py --file=train.jsonl.gz --out_dir=out/data/mine   # a local file
  python data/hh_rlhf.py --url=.../helpful-base/train.jsonl.gz --out_dir=out/data/hh_helpful   # another subset

A download is kept in out_dir and not fetched again. Pairs whose conversations differ before the last
answer, or whose last answers are equal or empty, are skipped and counted; a malformed line is an error.
"""
import collections
import gzip
import json
import os
import re
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project root
import model                        # noqa: E402
from data.alpaca import download    # noqa: E402

# -----------------------------------------------------------------------------
url = 'https://huggingface.co/datasets/Anthropic/hh-rlhf/resolve/main/harmless-base/train.jsonl.gz'
file = ''                  # a local .jsonl or .jsonl.gz file; empty: download url into out_dir first
out_dir = 'out/data/hh_rlhf'
# -----------------------------------------------------------------------------


def read_pairs(path):
    """[(chosen, rejected)] from a JSONL file, gzipped or not."""
    if not os.path.isfile(path):
        sys.exit(f'error: {path} not found')
    pairs = []
    try:
        with open(path, 'rb') as f:
            gzipped = f.read(2) == b'\x1f\x8b'
        with (gzip.open if gzipped else open)(path, 'rb') as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line.decode('utf-8'))
                except UnicodeDecodeError as e:
                    sys.exit(f'error: {path}:{n}: not UTF-8 text ({e.reason})')
                except json.JSONDecodeError as e:
                    sys.exit(f'error: {path}:{n}: bad JSON ({e.msg}, column {e.colno})')
                if not (isinstance(record, dict)
                        and all(isinstance(record.get(key), str) for key in ('chosen', 'rejected'))):
                    sys.exit(f'error: {path}:{n}: not an object with string "chosen" and "rejected"')
                pairs.append((record['chosen'], record['rejected']))
    except (OSError, EOFError, zlib.error) as e:  # a damaged .gz
        sys.exit(f'error: {path}: {e}')
    return pairs


def turns(text):
    """'\n\nHuman: a\n\nAssistant: b' -> ['a', 'b']; None unless the turns go Human, Assistant, ..., Assistant."""
    parts = re.split(r'(?:^|\n\n)(Human|Assistant):', text.strip())
    roles = parts[1::2]
    if parts[0].strip() or not roles or roles != ['Human', 'Assistant'] * (len(roles) // 2):
        return None
    return [part.strip() for part in parts[2::2]]


def ranking(chosen, rejected):
    """The pair as {'prompt': ..., 'answers': [chosen, rejected]}, or why it is skipped."""
    a, b = turns(chosen), turns(rejected)
    if a is None or b is None:
        return 'not Human/Assistant turns'
    if a[:-1] != b[:-1]:
        return 'conversations differ'
    if not a[-1] or not b[-1]:
        return 'empty answer'
    if a[-1] == b[-1]:
        return 'equal answers'
    messages = [dict(role=('user', 'assistant')[i % 2], content=text) for i, text in enumerate(a[:-1])]
    return dict(prompt=a[0] if len(messages) == 1 else messages, answers=[a[-1], b[-1]])


def main():
    model.configure(globals())
    path = file or os.path.join(out_dir, '-'.join(url.split('/')[-2:]))  # e.g. harmless-base-train.jsonl.gz
    if not file:
        download(url, path)
    results = [ranking(chosen, rejected) for chosen, rejected in read_pairs(path)]
    rankings = [r for r in results if isinstance(r, dict)]
    skipped = collections.Counter(r for r in results if isinstance(r, str))
    why = f' ({", ".join(f"{n:,} {reason}" for reason, n in skipped.items())})' if skipped else ''
    if not rankings:
        sys.exit(f'error: {path}: no usable pairs{why}')
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, 'rankings.jsonl')
    with open(out + '.tmp', 'w', encoding='utf-8') as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + '\n' for r in rankings)
    os.replace(out + '.tmp', out)
    print(f'{out}: {len(rankings):,} ranked pairs from {path}; skipped {sum(skipped.values()):,}{why}')


if __name__ == '__main__':
    main()
