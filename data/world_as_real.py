"""Is the judge RM right? Writes the world's data in the formats of real data; once the chain of
real data ran on them, --check puts gold beside the judge RM (README.md: "Real data, end to end").

  python data/world_as_real.py          # out/world_as_real/: corpus.txt, alpaca.json, hh.jsonl.gz
  DATA=real OUT=out/world_as_real CORPUS_FILE=out/world_as_real/corpus.txt \\
      ALPACA_FILE=out/world_as_real/alpaca.json HH_FILE=out/world_as_real/hh.jsonl.gz bash run.sh
  python data/world_as_real.py --check=out/world_as_real  # gold beside the judge RM, by stage
"""
import gzip
import json
import os
import sys
from pathlib import Path

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
    """HH-RLHF records of a ranking (best first): K/2 pairs, i-th best against i-th worst."""
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
    print(f'{out_dir}: corpus.txt ({n_docs:,} documents), alpaca.json ({n_demos:,} demonstrations),'
          f' hh.jsonl.gz ({len(pairs):,} pairs from {len(rows):,} rankings in {rankings})')


def gold_beside_judge(w, prompts, results, samples):
    """{stage: (gold, win vs SFT by gold, by the judge RM)}, each (mean, stderr) over prompts; the
    share of the (stage, SFT) answer pairs whose gold differs that the judge orders as gold; n."""
    gold = {stage: [tasks.score(w, p, a)[0] for p, a in zip(prompts, r['answers'])]
            for stage, r in results.items()}
    sft_judged, table, agree = results['sft']['judge'], {}, []
    for stage, r in results.items():
        wins = [*map(tasks.win, gold[stage], gold['sft'])], \
            [*map(tasks.win, r['judge'], sft_judged)]
        table[stage] = [tasks.mean_and_stderr(tasks.per_prompt(xs, samples))
                        for xs in (gold[stage], *wins)]
        agree += [(a > b) == (ga > gb) for a, b, ga, gb in  # (none for SFT: its gold is SFT's)
                  zip(r['judge'], sft_judged, gold[stage], gold['sft']) if ga != gb]
    return table, sum(agree) / max(len(agree), 1), len(agree)


def main():
    model.configure(globals())
    w = world.make_world(seed)
    if not check:
        return write_files(w, out_dir, rankings, n_docs, n_demos, flaw_rate, seed, manners)
    cached = {p.stem: json.loads(p.read_text()) for p in Path(check, 'report').glob('*.json')}
    if 'sft' not in cached:
        sys.exit(f'error: {check}/report/sft.json not found: run the chain of real data into '
                 f'{check} first (see above)')
    n_eval, samples = (cached['sft']['key']['config'][k] for k in ('n_eval', 'samples'))  # report's
    held_out = read_prompts(os.path.join(check, 'data', 'hh_rlhf', 'eval_prompts.jsonl'), n_eval)
    prompts = [p for p in held_out for _ in range(samples)]
    results = {stage: cached[stage]['result']  # pretrain, sft, then the others by name
               for stage in sorted(cached, key=lambda s: (s != 'pretrain', s != 'sft', s))}
    table, agree, n = gold_beside_judge(w, prompts, results, samples)
    print(f'{len(held_out)} held-out prompts x {samples} answers, gold beside the judge RM:')
    print('stage       gold ± se        win vs SFT by gold   win vs SFT by the judge RM')
    for stage, ((g, g_se), (gw, gw_se), (jw, jw_se)) in table.items():
        print(f'{stage:10s}  {g:.3f} ± {g_se:.3f}    {gw:.3f} ± {gw_se:.3f}        '
              f'{jw:.3f} ± {jw_se:.3f}')
    print(f'the judge RM orders {agree:.1%} of the {n:,} (stage, SFT) answer pairs whose gold '
          'differs as gold does')


if __name__ == '__main__':
    main()
