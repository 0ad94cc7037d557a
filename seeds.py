"""
The card of several seeds: `SEEDS=3 bash run.sh` runs the whole chain once per seed into
out/seed1, out/seed2, ... (the same world and held-out prompts; every stage's own draws, from
pretraining's initial weights on, under seed 1336 + N), and this script pools their report cards
into out/report.md: each stage's gold and gain over SFT as the mean over seeds, with a standard
error that counts the seeds as well as the prompts; each seed's row; the differences the README's
conclusions rest on; the frontier picture with every seed's curves. README: "One seed or three".

  python seeds.py --out_dir=out --seeds=3        # after SEEDS=3 bash run.sh
"""
import json
import math
import os
import sys
from pathlib import Path

import torch

from data import tasks
from data.tasks import mean_and_stderr, per_prompt
from model import configure, fmt, pm, table

# ----------------------------------------------------------------------------- config
out_dir = 'out'        # reads out_dir/seed<N>/report/*.json (report.py's), writes out_dir/report.md
seeds = 3              # seed1 .. seed<seeds>
stages = 'pretrain,sft,bestofk,dpo,rlhf,grpo,rloo,rlhf2'
# the differences the README's conclusions rest on: (a, b) reads "a - b"
differences = 'bestofk-rlhf,rlhf-dpo,rloo-rlhf,rlhf2-rlhf,bestofk-dpo'
# -----------------------------------------------------------------------------

METHODS = dict(rlhf='PPO', rloo='RLOO', grpo='GRPO', dpo='DPO')  # the frontier's logged curves


def two_way_stderr(x):
    """The mean of x[seed][prompt] and its standard error when both the seeds and the prompts are
    draws: the variance components of a two-way random-effects model without replication,
    x = mu + seed effect + prompt effect + residual (Searle, Casella & McCulloch 1992, ch. 4):
    with MS_s = n var(seed means), MS_p = S var(prompt means) and MS_r the residual mean square,
    var(mean) = s2_seed / S + s2_prompt / n + s2_res / (S n), where s2_seed = (MS_s - MS_r) / n,
    s2_prompt = (MS_p - MS_r) / S (each at least 0) and s2_res = MS_r. One seed: the prompts' error.
    (mean, stderr, the error one chain reports: the root mean square of the seeds' own errors)."""
    x = torch.tensor(x, dtype=torch.float64)
    S, n = x.shape
    within = math.sqrt(sum(mean_and_stderr(row.tolist())[1] ** 2 for row in x) / S)
    if S == 1 or n == 1:
        return x.mean().item(), within if S == 1 else x.mean(1).std().item() / math.sqrt(S), within
    seed_means, prompt_means, mu = x.mean(1), x.mean(0), x.mean()
    ms_seed, ms_prompt = n * seed_means.var(), S * prompt_means.var()
    residual = x - seed_means[:, None] - prompt_means[None, :] + mu
    ms_res = (residual ** 2).sum() / ((S - 1) * (n - 1))
    s2_seed, s2_prompt = (ms_seed - ms_res).clamp(min=0) / n, (ms_prompt - ms_res).clamp(min=0) / S
    variance = s2_seed / S + s2_prompt / n + ms_res / (S * n)
    return mu.item(), variance.sqrt().item(), within


def read_seed(folder, names):
    """One seed's report: its held-out prompts, and per stage the cached answers and gold scores."""
    prompts_file = Path(folder, 'report', 'prompts.json')
    if not prompts_file.exists():
        sys.exit(f'error: {prompts_file} is missing: run the seed\'s chain first '
                 f'(OUT={folder} bash run.sh, or SEEDS=... bash run.sh)')
    prompts = json.loads(prompts_file.read_text())
    results = {}
    for stage in names:
        path = Path(folder, 'report', f'{stage}.json')
        if path.exists():
            results[stage] = json.loads(path.read_text())['result']
    return prompts, results


def answer_values(r, refusals):
    """A stage's value per answer: its gold score, or 1.0 where it refuses (tasks.refuses)."""
    return [float(tasks.refuses(a)) for a in r['answers']] if refusals else r['summary']['scores']


def cells(runs, stage, samples, keep=None, minus=None, refusals=False):
    """x[seed][prompt] of a stage: each kept prompt's (all: keep=None) mean over its answers of
    their gold score (or refusal), less stage `minus`'s on the same prompt (paired)."""
    rows = []
    for results in runs:
        row = per_prompt(answer_values(results[stage], refusals), samples)
        if minus:
            base = per_prompt(answer_values(results[minus], refusals), samples)
            row = [a - b for a, b in zip(row, base)]
        rows.append([x for i, x in enumerate(row) if keep is None or i in keep])
    return rows if rows and rows[0] else None


def by_seed(x, spec='+.3f'):
    """Each seed's mean of x[seed][prompt], as 'a / b / c'."""
    return ' / '.join(f'{sum(row) / len(row):{spec}}' for row in x)


def pooled(x):
    """(mean, stderr) of x[seed][prompt], or None for no prompts."""
    return None if x is None else two_way_stderr(x)[:2]


def stage_rows(runs, names, samples):
    """Per stage: gold and gain over SFT pooled over seeds (± se over seeds and prompts), one
    chain's se beside, and each seed's gain."""
    rows = []
    for stage in names:
        gold = two_way_stderr(cells(runs, stage, samples))[:2]
        if stage == 'sft':
            rows.append((stage, pm(gold), '-', '-', '-', '-'))
            continue
        gains = cells(runs, stage, samples, minus='sft')
        mu, se, within = two_way_stderr(gains)
        rows.append((stage, pm(gold), pm((mu, se), '+'), fmt(within),
                     by_seed(gains),
                     'yes' if abs(mu) > 2 * se else 'no'))
    return table(['stage', 'gold ± se', 'gain over SFT ± se', "one chain's se",
                  'gain in each seed', 'gain > 2 se'], rows)


def difference_rows(runs, pairs, samples):
    """Each stated difference a - b, paired by prompt within each seed, pooled over seeds."""
    rows = []
    for a, b in pairs:
        differences = cells(runs, a, samples, minus=b)
        mu, se, within = two_way_stderr(differences)
        verdict = 'holds across seeds' if abs(mu) > 2 * se else 'a tie (within 2 se)'
        rows.append((f'{a} - {b}', f'{mu:+.3f} ± {se:.3f}', fmt(within),
                     by_seed(differences), verdict))
    return table(['difference', 'mean ± se', "one chain's se", 'in each seed', 'verdict'], rows)


def where(prompts, split=None, kind=None, new_verb=False):
    """The indices of the prompts of a split and kind (None: any), with a new verb if asked."""
    keep = set()
    for i, prompt in enumerate(prompts):
        form = tasks.parse_form(prompt)
        if ((split is None or tasks.generalisation(prompt) == split) and
                (kind is None or form[0] == kind) and
                (not new_verb or form[3].get('verb') in tasks.NEW_WORDS)):
            keep.add(i)
    return keep


def split_rows(runs, names, prompts, samples):
    """Per stage, the gain over SFT in each split (pooled), and splits b, c, d over split a."""
    parts = {s: where(prompts, s) for s in tasks.GENERALISATION}
    rows = []
    for stage in names[names.index('sft') + 1:]:
        gains = {s: pooled(cells(runs, stage, samples, keep, minus='sft'))
                 for s, keep in parts.items()}
        ratios = [fmt(gains[s][0] / gains['a'][0], 2) if gains[s] and gains['a'] and
                  gains['a'][0] > 0 else '-' for s in list(parts)[1:]]
        rows.append((stage, *(pm(gains[s], '+') for s in parts), *ratios))
    names = [f'{s}: {label}' for s, label in tasks.GENERALISATION.items()]
    return table(['stage', *names, *(f'{s} / a' for s in list(parts)[1:])], rows)


def worst_rows(runs, names, prompts, samples):
    """Per stage, the kind and split whose pooled gain over SFT is lowest in standard errors (a
    method makes something worse where that is below -2), and the same lowest in each seed alone,
    each in its own chain's standard error."""
    groups = {f'{s}/{k}': where(prompts, s, k) for s in tasks.GENERALISATION
              for k in tasks.KIND_SHARES}
    rows = []
    for stage in names[names.index('sft') + 1:]:
        found, per_seed = [], [[] for _ in runs]
        for group, keep in groups.items():
            gains = cells(runs, stage, samples, keep, minus='sft')
            gain = pooled(gains)
            if gain and gain[1] > 1e-9:  # (a group all alike: no error to count in)
                found.append((gain[0] / gain[1], group, gain))
            for n, row in enumerate(gains or []):
                mu, se = mean_and_stderr(row)
                if se > 1e-9:
                    per_seed[n].append((mu / se, group))
        t, group, gain = min(found, default=(0.0, '-', None))
        lowest = [min(seed, default=(0.0, '-')) for seed in per_seed]
        rows.append((stage, group, pm(gain, '+'), f'{t:+.1f}', 'yes' if t < -2 else 'no',
                     ' / '.join(f'{g} {x:+.1f}' for x, g in lowest),
                     'yes' if any(x < -2 for x, _ in lowest) else 'no'))
    return table(['stage', 'lowest (split/kind)', 'gain over SFT ± se', 'in se',
                  'worse than SFT', 'lowest in each seed (in its se)', 'worse in a seed'], rows)


def kind_rows(runs, names, prompts, samples):
    """Per stage, the gold score of each kind in each split (the mean over seeds and prompts)."""
    groups = {kind: [where(prompts, s, kind) for s in tasks.GENERALISATION]
              for kind in tasks.KIND_SHARES}
    rows = []
    for stage in names:
        row = [stage]
        for parts in groups.values():
            means = [cells(runs, stage, samples, keep) for keep in parts]
            row.append(' / '.join(fmt(sum(map(sum, x)) / sum(map(len, x)), 2) if x else '-'
                                  for x in means))
        rows.append(row)
    return table(['stage', *groups], rows)


def each_seed(x):
    """x[seed][prompt] as its pooled mean ± se and each seed's mean: '0.62 ± 0.05 (0.58 / 0.66)'."""
    if x is None:
        return '-'
    return f'{pm(pooled(x))} ({by_seed(x, ".2f")})'


def safety_rows(runs, names, prompts, samples):
    """Harmful requests with a new verb (gold, pooled), and the share of harmless requests refused
    per split: the mean over seeds and the largest of any seed."""
    harmful = {s: where(prompts, s, 'harmful', new_verb=True) for s in 'cd'}
    harmless = {s: where(prompts, s, 'harmless') for s in tasks.GENERALISATION}
    rows = []
    for stage in names:
        refused = []
        for keep in harmless.values():
            per_seed = [sum(row) / len(row) for row in cells(runs, stage, samples, keep,
                                                              refusals=True) or []]
            refused.append(f'{sum(per_seed) / len(per_seed):.2f} ({max(per_seed):.2f})'
                           if per_seed else '-')
        rows.append((stage, *(each_seed(cells(runs, stage, samples, keep))
                              for keep in harmful.values()), *refused))
    header = ['stage', *(f'harmful, new verb, {s} ({len(keep)} prompts): pooled (each seed)'
                         for s, keep in harmful.items()),
              *(f'harmless refused, {s}: mean (largest seed)' for s in harmless)]
    return table(header, rows)


def probe_rows(folders, names):
    """The probe's requests (report.py's report/<stage>.probe.json), per stage and column: the
    pooled mean ± se over seeds and prompts, and each seed's."""
    probes = [{stage: json.loads(path.read_text())['result'] for stage in names
               if (path := Path(folder, 'report', f'{stage}.probe.json')).exists()}
              for folder in folders]
    if not all('sft' in probe for probe in probes):
        return ["(a seed's SFT model has no answers to the probe's requests: that seed's report "
                'ran with --probe_n=0 or before report.py asked them; run report.py again there)']
    cells = [{stage: tasks.probe_cells(r) for stage, r in probe.items()} for probe in probes]
    rows = [(stage, *(each_seed([seed[stage][name] for seed in cells])
                      for name in tasks.PROBE_REQUESTS))
            for stage in names if all(stage in seed for seed in cells)]
    sft = probes[0]['sft']
    samples = len(sft['answers']) // len(sft['prompts'])
    counts = ' / '.join(str(len(values)) for values in cells[0]['sft'].values())
    return [f"data/tasks.py probe_requests ({counts} prompts, half in split c and half in d, "
            f'{samples} answers each per seed): gold of the harmful requests, the share of answers '
            'that refuse the harmless ones (should be 0); pooled ± se (each seed):', '',
            *table(['stage', *tasks.PROBE_REQUESTS], rows)]


def rm_rows(folders):
    """Each seed's RMs: held-out pairwise accuracy against gold, all prompts and per split."""
    rows = []
    for name in ('reward', 'reward2'):
        accs = []
        for folder in folders:
            path = Path(folder, name, 'metrics.jsonl')
            lines = path.read_text().splitlines() if path.exists() else []
            after = [json.loads(line) for line in lines if '"after"' in line]
            accs.append(after[-1] if after else None)
        if not any(accs):
            continue
        for split in ['all', *tasks.GENERALISATION, 'harmful, new verb', *tasks.PROBE]:
            parts = [(m if split == 'all' else m.get('splits', {}).get(split, {})) if m else {}
                     for m in accs]
            values = [p['acc_gold'] if p.get('gold_pairs') else None for p in parts]
            known = [v for v in values if v is not None]
            rows.append((name, split, fmt(sum(known) / len(known)) if known else '-',
                         ' / '.join(fmt(v) for v in values)))
    return table(['RM', 'held-out prompts', 'acc vs gold, mean', 'in each seed'], rows)


def seed_rows(runs, names, folders, samples):
    """Each seed's gold per stage, and its chain's stage time."""
    rows = []
    for folder, results in zip(folders, runs):
        times_path = Path(folder, 'stage_times.json')
        times = json.loads(times_path.read_text()) if times_path.exists() else {}
        golds = [fmt(mean_and_stderr(per_prompt(results[s]['summary']['scores'], samples))[0])
                 for s in names]
        rows.append((os.path.basename(folder), *golds, f'{sum(times.values()) / 60:.0f} min'))
    return table(['seed', *names, 'stage time (summed; with JOBS=2 the lanes overlap)'], rows)


def frontier_picture(folders, out_dir):
    """Gold against sqrt(KL to SFT) for every method of every seed: out_dir/report_frontier.png."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return 'pip install matplotlib for the picture'
    fig, ax = plt.subplots(figsize=(7, 5))
    colors = dict(zip([*METHODS, 'bestofk'], plt.rcParams['axes.prop_cycle'].by_key()['color']))
    for number, folder in enumerate(folders, 1):
        style = ['o-', 's--', '^:', 'v-.'][(number - 1) % 4]
        for stage, label in METHODS.items():
            path = Path(folder, stage, 'metrics.jsonl')
            rows = [json.loads(line) for line in path.read_text().splitlines()
                    if line.strip()] if path.exists() else []
            rows = [r for r in rows if r.get('kind') == 'eval' and 'kl' in r]
            if rows:
                ax.plot([math.sqrt(max(r['kl'], 0)) for r in rows], [r['gold'] for r in rows],
                        style, color=colors[stage], alpha=0.6, label=f'{label}, seed {number}')
        ckpt = Path(folder, 'bestofk', 'ckpt.pt')
        best = torch.load(ckpt, map_location='cpu', weights_only=True).get('metrics', {}).get(
            'best_of_k', []) if ckpt.exists() else []
        if best:
            ax.plot([math.sqrt(r['kl_bound']) for r in best], [r['gold'] for r in best], style,
                    color=colors['bestofk'], alpha=0.6, label=f'best-of-K sampling, seed {number}')
    ax.set(xlabel='sqrt(KL to SFT), nats per answer', ylabel='gold score',
           title='gold against KL spent, every seed')
    ax.legend(fontsize='x-small', ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, 'report_frontier.png'), dpi=110)
    plt.close(fig)
    return '![gold against sqrt(KL), every seed](report_frontier.png)'


def main():
    configure(globals())
    folders = [os.path.join(out_dir, f'seed{n}') for n in range(1, seeds + 1)]
    read = [read_seed(folder, stages.split(',')) for folder in folders]
    held_out, runs = read[0][0], [results for _, results in read]
    if any(prompts != held_out for prompts, _ in read):
        sys.exit('error: the seeds answered different held-out prompts (another world or n_eval): '
                 'pool only chains of one world')
    names = [s for s in stages.split(',') if all(s in results for results in runs)]
    if 'sft' not in names:
        sys.exit(f'error: a seed has no report of the SFT model in {out_dir}/seed*/report/')
    samples = len(runs[0]['sft']['summary']['scores']) // len(held_out)
    pairs = [tuple(d.split('-')) for d in differences.split(',') if d]
    pairs = [(a, b) for a, b in pairs if a in names and b in names]
    lines = ['# Report: every stage, pooled over seeds', '', (
        f'{seeds} chains ({", ".join(folders)}), each its own draws (initial weights, batches, '
        f'sampled answers, labels) on the same world; {len(held_out)} held-out prompts, {samples} '
        'answers to each per seed (each seed\'s card: seed<N>/report.md). A mean ± se here is the '
        'mean over seeds, and its standard error counts the seeds as well as the prompts: the '
        'variance components of a two-way random-effects model (seeds x prompts; seeds.py, '
        "two_way_stderr). One chain's se: the error a single chain's card reports (prompts only). "
        f'With {seeds} seeds the seed component rests on {seeds - 1} degree'
        f'{"s" if seeds > 2 else ""} of freedom: read a difference of about two standard errors '
        'as suggestive, not settled.'),
        '', '## Stages', '', *stage_rows(runs, names, samples),
        '', "## The differences the README's conclusions rest on", '',
        *difference_rows(runs, pairs, samples),
        '', '## Gain over SFT by split of generalisation', '',
        *split_rows(runs, names, held_out, samples),
        '', f'## Gold of each kind, in splits {" / ".join(tasks.GENERALISATION)}', '',
        *kind_rows(runs, names, held_out, samples),
        '', '## Does any method make a kind worse?', '',
        *worst_rows(runs, names, held_out, samples),
        '', '## Harmful requests with new verbs, harmless ones refused', '',
        *safety_rows(runs, names, held_out, samples),
        '', "## The probe's requests, answered", '', *probe_rows(folders, names),
        '', '## Reward models', '', *rm_rows(folders),
        '', '## Each seed', '', *seed_rows(runs, names, folders, samples),
        '', '## Gold against KL, every seed', '', frontier_picture(folders, out_dir)]
    Path(out_dir, 'report.md').write_text('\n'.join(lines) + '\n')
    print(f'wrote {os.path.join(out_dir, "report.md")}')


if __name__ == '__main__':
    main()
