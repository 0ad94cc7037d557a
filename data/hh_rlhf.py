"""
Makes reward-model data from Anthropic's HH-RLHF preference pairs (Bai et al. 2022): JSONL lines
{"chosen": "\n\nHuman: ...\n\nAssistant: ...", "rejected": ...}, a conversation with two last
answers, each -> {"prompt": ..., "answers": [chosen, rejected]} (best first); the prompt is a
string for a single human turn, else a list of messages ending with the user's turn.

  python data/hh_rlhf.py                                  # download harmless-base/train.jsonl.gz
  python data/hh_rlhf.py --file=train.jsonl.gz --out_dir=out/data/mine   # a local file
  python data/hh_rlhf.py --url=.../helpful-base/train.jsonl.gz --out_dir=out/data/helpful  # another

There is no gold judge for real data, so a hash of the first question splits the pairs three ways
(Gao et al. 2022's proxy/gold split): conversations that open alike never straddle two parts:
  rankings.jsonl        the proxy half: the RM (reward.py) and DPO learn from it;
  prompts.jsonl         its one-turn prompts, once each: what PPO and best-of-K answer;
  judge_rankings.jsonl  the judge half: only the judge RM learns from it, the report card's scorer;
  eval_rankings.jsonl   held out from every stage and both RMs (eval_share of pairs): RM accuracy;
  eval_prompts.jsonl    its one-turn prompts: what the report card asks every stage.
Policy stages take one-turn prompts only (bestofk.py fine-tunes on, and report.py measures KL of,
one-turn conversations); the RMs and DPO learn from every pair, multi-turn ones too.

Pairs whose conversations differ before the last answer, or whose last answers are equal or empty,
are skipped and counted; a malformed line is an error. A download is kept, not fetched again.
"""
import collections
import gzip
import hashlib
import os
import re
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project root
import model                   # noqa: E402
from data import formats        # noqa: E402
from data.alpaca import download, loads    # noqa: E402

# -----------------------------------------------------------------------------
url = 'https://huggingface.co/datasets/Anthropic/hh-rlhf/resolve/main/harmless-base/train.jsonl.gz'
file = ''                  # a local .jsonl or .jsonl.gz file; empty: download url into out_dir
out_dir = 'out/data/hh_rlhf'
eval_share = 0.1           # of the pairs held out for evaluation (by hash of the first question)
judge_share = 0.45         # of the pairs for the judge RM; the rest (0.45) is the proxy half
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
                    record = loads(line.decode('utf-8'), path, n)  # (bad JSON: an error)
                except UnicodeDecodeError as e:
                    sys.exit(f'error: {path}:{n}: not UTF-8 text ({e.reason})')
                if not isinstance(record, dict) or not all(
                        isinstance(record.get(key), str) for key in ('chosen', 'rejected')):
                    sys.exit(f'error: {path}:{n}: not an object with string "chosen" and '
                             '"rejected"')
                pairs.append((record['chosen'], record['rejected']))
    except (OSError, EOFError, zlib.error) as e:  # a damaged .gz
        sys.exit(f'error: {path}: {e}')
    return pairs


def turns(text):
    """'\n\nHuman: a\n\nAssistant: b' -> ['a', 'b']; None unless Human, Assistant, ... Assistant."""
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
    messages = [dict(role=('user', 'assistant')[i % 2], content=text)
                for i, text in enumerate(a[:-1])]
    return dict(prompt=a[0] if len(messages) == 1 else messages, answers=[a[-1], b[-1]])


def part(ranking, eval_share, judge_share):
    """'eval', 'judge' or 'proxy': where the ranking goes, from a hash of its first question (a
    stable number in [0, 1), the same on every machine and Python, unlike hash())."""
    first = model.as_messages(ranking['prompt'])[0]['content']
    u = int(hashlib.md5(first.encode('utf-8')).hexdigest()[:8], 16) / 2**32
    return 'eval' if u < eval_share else 'judge' if u < eval_share + judge_share else 'proxy'


def one_turn_prompts(rankings):
    """The one-turn prompts of the rankings, each once, in order of first appearance."""
    return list(dict.fromkeys(r['prompt'] for r in rankings if isinstance(r['prompt'], str)))


def read_prompts(path, n=0):
    """The first n (0: all) prompts of a prompts file ({"prompt": "text"} lines, as main() writes):
    what rlhf.py, bestofk.py and report.py answer when the policy was not trained on the world."""
    check = lambda row: ('' if isinstance(row['prompt'], str) and row['prompt'].strip()
                         else '"prompt" must be a text')
    prompts = [row['prompt'] for row in formats.read_jsonl(path, check, '{"prompt": "..."}')]
    if not prompts:
        sys.exit(f'error: {path}: no prompts (data/hh_rlhf.py writes them)')
    return prompts[:n or None]


def main():
    model.configure(globals())
    if not (0 < eval_share and 0 < judge_share and eval_share + judge_share < 1):
        sys.exit(f'error: eval_share and judge_share must be above 0 and leave a share for the '
                 f'proxy (got {eval_share} and {judge_share})')
    path = file or os.path.join(out_dir, '-'.join(url.split('/')[-2:]))  # <subset>-train.jsonl.gz
    if not file:
        download(url, path)
    results = [ranking(chosen, rejected) for chosen, rejected in read_pairs(path)]
    rankings = [r for r in results if isinstance(r, dict)]
    skipped = collections.Counter(r for r in results if isinstance(r, str))
    why = f' ({", ".join(f"{n:,} {reason}" for reason, n in skipped.items())})' if skipped else ''
    if not rankings:
        sys.exit(f'error: {path}: no usable pairs{why}')
    where = [part(r, eval_share, judge_share) for r in rankings]
    parts = {name: [r for r, w in zip(rankings, where) if w == name]
             for name in ('proxy', 'judge', 'eval')}
    prompts, eval_prompts = one_turn_prompts(parts['proxy']), one_turn_prompts(parts['eval'])
    os.makedirs(out_dir, exist_ok=True)
    files = dict(rankings=parts['proxy'], judge_rankings=parts['judge'],
                 eval_rankings=parts['eval'], prompts=[dict(prompt=p) for p in prompts],
                 eval_prompts=[dict(prompt=p) for p in eval_prompts])
    for name, rows in files.items():
        formats.write_jsonl(os.path.join(out_dir, f'{name}.jsonl'), rows)
    print(f'{len(rankings):,} ranked pairs from {path}; skipped {sum(skipped.values()):,}{why}\n'
          f'split by a hash of the first question into {out_dir}/:\n'
          f'  rankings.jsonl        {len(parts["proxy"]):7,} pairs  proxy: the RM and DPO '
          f'(prompts.jsonl: {len(prompts):,} one-turn prompts for PPO and best-of-K)\n'
          f'  judge_rankings.jsonl  {len(parts["judge"]):7,} pairs  the judge RM only\n'
          f'  eval_rankings.jsonl   {len(parts["eval"]):7,} pairs  held out '
          f'(eval_prompts.jsonl: {len(eval_prompts):,} one-turn prompts for the report card)')


if __name__ == '__main__':
    main()
