"""
Is the judge RM right? The chain of real data (run.sh with DATA=real) has no gold judge: a second
reward model, trained on the half of the preference pairs that no stage sees, scores every stage.
This script puts the world's data in the formats of real data, so that chain runs on it, and then
the gold judge can check the judge RM's verdict on every stage.

  python data/world_as_real.py          # out/world_as_real/: corpus.txt, alpaca.json, hh.jsonl.gz
  DATA=real OUT=out/world_as_real CORPUS_FILE=out/world_as_real/corpus.txt \\
      ALPACA_FILE=out/world_as_real/alpaca.json HH_FILE=out/world_as_real/hh.jsonl.gz bash run.sh
  python data/world_as_real.py --check=out/world_as_real  # gold beside the judge RM, by stage

The corpus and the demonstrations are the world's, as data/prepare.py makes them; the pairs come
from the rankings of a world chain's reward.py (the SFT model's answers, ranked by the simulated
labeler): a ranking of K answers gives K/2 disjoint pairs, the 1st against the last, the 2nd
against the one before it, and so on. --check reads the answers report.py kept.
"""
import gzip
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project root
import model                   # noqa: E402
from data import formats, prepare, tasks, world    # noqa: E402
from data.hh_rlhf import read_prompts    # noqa: E402

# -----------------------------------------------------------------------------
rankings = 'out/reward/rankings.jsonl'  # a world chain's ranked answers (reward.py writes them)
out_dir = 'out/world_as_real'
check = ''                 # the out dir of a DATA=real chain on these files: its report beside gold
n_docs = prepare.n_docs    # the world as data/prepare.py makes it
seed = prepare.seed
manners = prepare.manners
n_demos = prepare.n_demos
flaw_rate = prepare.flaw_rate
# -----------------------------------------------------------------------------


def hh_pairs(ranking):
    """HH-RLHF's {"chosen", "rejected"} records of a ranking (answers best first): K/2 pairs."""
    prompt, answers = ranking['prompt'], ranking['answers']
    return [{key: f'\n\nHuman: {prompt}\n\nAssistant: {answer}'
             for key, answer in (('chosen', answers[i]), ('rejected', answers[-1 - i]))}
            for i in range(len(answers) // 2) if answers[i] != answers[-1 - i]]


def write_files(w, out_dir, rankings, n_docs, n_demos, flaw_rate, seed, manners):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, 'corpus.txt'), 'w') as f:
        f.writelines(doc + '\n<|endoftext|>\n' for doc in world.corpus(w, n_docs, seed, manners))
    with open(os.path.join(out_dir, 'alpaca.json'), 'w') as f:  # (one turn: a demo's first)
        json.dump([dict(instruction=messages[0]['content'], input='', output=messages[1]['content'])
                   for messages in tasks.demonstrations(w, n_demos, flaw_rate, seed)], f)
    rows = formats.read_jsonl(rankings, lambda row: '', '{"prompt": ..., "answers": [...]}')
    pairs = [pair for row in rows for pair in hh_pairs(row)]
    with gzip.open(os.path.join(out_dir, 'hh.jsonl.gz'), 'wt') as f:
        f.writelines(json.dumps(pair) + '\n' for pair in pairs)
    print(f'{out_dir}: corpus.txt ({n_docs:,} documents), alpaca.json ({n_demos:,} '
          f'demonstrations), hh.jsonl.gz ({len(pairs):,} pairs from {len(rows):,} rankings in '
          f'{rankings})')


def win(a, b):
    return 1.0 if a > b else 0.5 if a == b else 0.0


def gold_beside_judge(w, prompts, results, samples):
    """{stage: (gold, gold's win rate vs SFT, the judge RM's win rate vs SFT)}, each (mean, stderr)
    over prompts; the share of (stage, SFT) answer pairs whose gold differs that the judge RM
    orders as gold does; their number."""
    gold = {stage: [tasks.score(w, p, a)[0] for p, a in zip(prompts, r['answers'])]
            for stage, r in results.items()}
    sft_judged, table, agree = results['sft']['judge'], {}, []
    for stage, r in results.items():
        wins = [*map(win, gold[stage], gold['sft'])], [*map(win, r['judge'], sft_judged)]
        table[stage] = [tasks.mean_and_stderr([sum(xs[i:i + samples]) / samples  # per prompt
                                               for i in range(0, len(xs), samples)])
                        for xs in (gold[stage], *wins)]
        if stage != 'sft':
            agree += [(a > b) == (ga > gb) for a, b, ga, gb in
                      zip(r['judge'], sft_judged, gold[stage], gold['sft']) if ga != gb]
    return table, sum(agree) / max(len(agree), 1), len(agree)


def main():
    model.configure(globals())
    w = world.make_world(seed)
    if not check:
        return write_files(w, out_dir, rankings, n_docs, n_demos, flaw_rate, seed, manners)
    folder, first = os.path.join(check, 'report'), {'pretrain': 0, 'sft': 1}  # then by name
    names = [p.removesuffix('.json') for p in os.listdir(folder) if p.endswith('.json')] \
        if os.path.isdir(folder) else []
    cached = {name: json.load(open(os.path.join(folder, f'{name}.json')))
              for name in sorted(names, key=lambda name: (first.get(name, 2), name))}
    if 'sft' not in cached:
        sys.exit(f'error: {check}/report/sft.json not found: run the chain of real data into '
                 f'{check} first (see above)')
    n_eval, samples = (cached['sft']['key']['config'][k] for k in ('n_eval', 'samples'))  # report's
    prompts = read_prompts(os.path.join(check, 'data', 'hh_rlhf', 'eval_prompts.jsonl'), n_eval)
    prompts = [p for p in prompts for _ in range(samples)]
    results = {stage: c['result'] for stage, c in cached.items()}
    table, agree, n = gold_beside_judge(w, prompts, results, samples)
    print(f'{len(prompts) // samples} held-out prompts x {samples} answers, gold beside '
          'the judge RM:')
    print('stage       gold ± se        win vs SFT by gold   win vs SFT by the judge RM')
    for stage, ((g, g_se), (gw, gw_se), (jw, jw_se)) in table.items():
        print(f'{stage:10s}  {g:.3f} ± {g_se:.3f}    {gw:.3f} ± {gw_se:.3f}        '
              f'{jw:.3f} ± {jw_se:.3f}')
    print(f'the judge RM orders {agree:.1%} of the {n:,} (stage, SFT) answer pairs whose gold '
          'differs as gold does')


if __name__ == '__main__':
    main()
