"""
The chain's report card: every checkpoint answers the same held-out prompts `samples` times each,
and the gold judge (on real data, a judge RM), the round-1 RM and the SFT model (KL to SFT) score
the answers; on the world each also answers the probe's requests (data/tasks.py probe_requests).
Writes out_dir/report.md, report_*.png (with matplotlib) and report/<stage>.json and .probe.json
(the answers kept: a rerun asks only new checkpoints). README.md: "The report card", "Real data".
On real data the card adds the win rate at equal length and ranks the stages only when the judge
RM is measurably above chance on held-out pairs (README: "When the card ranks the stages").

  python report.py                                 # every stage of out/ that has a checkpoint
  python report.py --n_eval=50 --stages=sft,rlhf   # fewer prompts, some stages
  torchrun --nproc_per_node=8 report.py            # each process answers a share of the prompts
"""
import hashlib
import json
import math
import os
import sys
from pathlib import Path

import torch

from data import tasks
from data.formats import read_rankings
from data.hh_rlhf import read_prompts
from data.tasks import mean_and_stderr, per_prompt, win
from model import (STAGES, all_gather, answer_prompts, answer_text, configure, fitting, fmt,
                   input_stamps, load_checkpoint, load_tokenizer, made_by, pm, rank_and_size,
                   ranking_scores, rm_accuracy, sampled_kl, score_pairs, setup, table, teardown)

# ----------------------------------------------------------------------------- config
out_dir = 'out'        # reads out_dir/<stage>/ckpt.pt, writes out_dir/report.md and report_*.png
stages = 'pretrain,sft,bestofk,dpo,rlhf,grpo,rloo,rlhf2'  # the rows in this order (if they exist)
reward_model = ''      # the RM of the RM-score column; '': out_dir/reward (round 1)
n_eval = 400           # held-out prompts
samples = 8            # answers per prompt and checkpoint: one is too noisy to tell stages apart
max_new_tokens = 128
temperature = 1.0
n_examples = 5         # prompts shown with each checkpoint's answer side by side
probe_n = 100          # the probe's requests a cell (data/tasks.py probe_requests; 0: none) ...
probe_samples = 2      # ... each answered this often by every checkpoint
# a model not trained on the world (no gold judge)
prompt_file = ''       # held-out prompts, JSONL of {"prompt": "text"} (data/hh_rlhf.py's)
judge_model = ''       # the judge RM, trained on pairs no stage saw; '': out_dir/judge
eval_rankings = ''     # held-out ranked pairs (reward.py's format): both RMs' accuracy on them
# system
device = 'auto'
dtype = 'auto'
seed = 1337
# -----------------------------------------------------------------------------

JUDGE_COMMAND = ("python reward.py --n_prompts=0 --n_eval=0 --rankings=judge_rankings.jsonl "
                 "(data/hh_rlhf.py's) --out_dir={}")
LOGS = ('pretrain', 'rlhf', 'rlhf2', 'grpo', 'rloo', 'dpo', 'rlhf_beta0')  # metrics.jsonl drawn
METHODS = dict(rlhf='PPO', grpo='GRPO', rloo='RLOO', dpo='DPO', rlhf_beta0='PPO, beta=0')


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


@torch.no_grad()
def answer_and_score(model, sft, rm, judge_rm, enc, world, prompts, max_new_tokens, temperature,
                     autocast, device, desc):
    """One checkpoint's answers, whether each ended, and their scores (None without that judge)."""
    rank, world_size = rank_and_size()
    tokens = answer_prompts(model.eval(), enc, prompts, max_new_tokens, temperature, autocast, desc)
    ended = [t[-1:] == [enc.encode_single_token('<|end|>')] for t in tokens]
    answers = [answer_text(enc, t) for t in tokens]
    mine = range(rank, len(prompts), world_size)  # each rank scores a share, gathered in order
    pairs, nothing = [(prompts[i], answers[i]) for i in mine], [None] * len(mine)
    rewards = nothing if rm is None else score_pairs(rm, enc, pairs, autocast, device)
    judged = nothing if judge_rm is None else score_pairs(judge_rm, enc, pairs, autocast, device)
    kls = ([0.0] * len(pairs) if model is sft or not pairs else  # (SFT to itself: 0)
           sampled_kl(model, sft, enc, *zip(*pairs), autocast, device))
    rows = sorted(all_gather(zip(mine, rewards, kls, judged)))
    return dict(summary=tasks.summarize(world, prompts, answers) if world else None,
                answers=answers, ended=ended, rm=mean(r for i, r, _, _ in rows if ended[i]),
                kl=mean(row[2] for row in rows), length=mean(map(len, tokens)),
                lengths=list(map(len, tokens)),
                judge=None if judge_rm is None else [row[3] for row in rows])


@torch.no_grad()
def probe_answers(stage, sft, enc, world, requests, config, autocast, device):
    """A stage's answers to the probe's requests (data/tasks.py probe_requests), their gold
    scores and whether each refuses; kept in out_dir/report/<stage>.probe.json as the card's
    answers are."""
    rank, world_size = rank_and_size()
    prompts = [p for p in requests for _ in range(config['probe_samples'])]
    path = os.path.join(config['out_dir'], stage, 'ckpt.pt')
    key = cache_key(config, [path], world_size, prompts)
    cache = os.path.join(config['out_dir'], 'report', f'{stage}.probe.json')
    r = read_cache(cache, key)
    if r is None:  # (its own draws: the held-out answers are the same with or without it)
        model = sft if stage == 'sft' else load_checkpoint(path, made_by(path), device,
                                                           scalar_head=False)[0]
        torch.manual_seed(config['seed'] + rank)
        tokens = answer_prompts(model.eval(), enc, prompts, config['max_new_tokens'],
                                config['temperature'], autocast, f'{stage}: the probe')
        answers = [answer_text(enc, t) for t in tokens]
        r = dict(prompts=requests, answers=answers, lengths=list(map(len, tokens)),
                 scores=[tasks.score(world, p, a)[0] for p, a in zip(prompts, answers)],
                 refuses=[float(tasks.refuses(a)) for a in answers])
        if rank == 0:
            write_cache(cache, key, r)
    return r


def compare_with_sft(results, world, samples):
    """Adds the gain over SFT (paired by prompt) and the win rate vs SFT (by gold or judge RM)."""
    sft = results.get('sft')
    for r in results.values():
        r['gain'] = r['win'] = r['lc_win'] = None
        if sft and world:
            scores, sft_scores = r['summary']['scores'], sft['summary']['scores']
            r['gain'] = mean_and_stderr([a - b for a, b in zip(
                per_prompt(scores, samples), per_prompt(sft_scores, samples))])
            r['win'] = mean(map(win, scores, sft_scores))
        elif sft:
            wins = list(map(win, r['judge'], sft['judge']))
            r['win'] = mean_and_stderr(per_prompt(wins, samples))
            r['lc_win'] = length_controlled_win(
                wins, [a - b for a, b in zip(r['lengths'], sft['lengths'])], samples)


def length_controlled_win(wins, length_diffs, samples, n_boot=200, ridge=1e-2, seed=0):
    """The win rate at equal length, read as length-controlled AlpacaEval reads it (Dubois et al.
    2024): a logistic regression of each win (1, a tie 0.5, 0) on tanh(length difference / its
    std), at a difference of 0: sigmoid(intercept); ± its standard error by a bootstrap over
    prompts (`samples` answers each, in a row). Newton's method, every bootstrap draw at once (a
    draw: a weight per answer); a small ridge keeps it finite when one side always wins."""
    y, d = (torch.tensor(v, dtype=torch.float64) for v in (wins, length_diffs))
    x = torch.stack([torch.ones_like(d), torch.tanh(d / (d.std(correction=0).item() or 1.0))], 1)
    n = len(wins) // samples
    draws = torch.randint(n, (n_boot, n), generator=torch.Generator().manual_seed(seed))
    counts = torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(n_boot, n, dtype=torch.float64))  # how often each prompt was drawn
    weights = torch.cat([torch.ones(1, n, dtype=torch.float64), counts]).repeat_interleave(
        samples, dim=1)  # row 0: the data itself
    w, eye = torch.zeros(len(weights), 2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)
    for _ in range(30):
        p = torch.sigmoid(w @ x.T)
        grad = (weights * (p - y)) @ x + ridge * w
        hessian = torch.einsum('bn,ni,nj->bij', weights * p * (1 - p), x, x) + ridge * eye
        w = w - torch.linalg.solve(hessian, grad[..., None])[..., 0]
    won = torch.sigmoid(w[:, 0])
    return won[0].item(), won[1:].std().item()


def accuracy_interval(acc, n):
    """The 95% interval of a pairwise accuracy over n pairs (normal approximation)."""
    half = 1.96 * math.sqrt(acc * (1 - acc) / max(n, 1))
    return acc - half, acc + half


def read_metrics(out_dir, stage):
    path = Path(out_dir, stage, 'ckpt.pt')
    ckpt = torch.load(path, map_location='cpu', weights_only=True) if path.exists() else {}
    return ckpt.get('metrics') or {}


def read_log(out_dir, stage):
    """The rows of out_dir/<stage>/metrics.jsonl (a line cut short by a kill is skipped)."""
    path = Path(out_dir, stage, 'metrics.jsonl')
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    return [json.loads(line) for line in lines if line.strip() and line.endswith('\n')]


def cache_key(config, paths, world_size, prompts):
    """What the answers and scores depend on: the files read, the settings, the processes, and the
    held-out prompts themselves (data/tasks.py can change them with no file changing)."""
    unused = ('out_dir', 'stages', 'n_examples', 'eval_rankings', 'probe_n', 'probe_samples')
    key = dict(inputs=input_stamps(filter(os.path.exists, paths)), world_size=world_size,
               config={k: v for k, v in config.items() if k not in unused},
               prompts=hashlib.md5(json.dumps(prompts).encode()).hexdigest())
    return json.loads(json.dumps(key))  # (as it reads back from the file)


def read_cache(path, key):
    """The result kept in path for this key, or None (no file, another key, unreadable)."""
    try:
        cached = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    found = isinstance(cached, dict) and cached.get('key') == key
    return cached['result'] if found and 'lengths' in cached['result'] else None  # (older: none)


def write_cache(path, key, result):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + '.tmp', 'w') as f:
        json.dump(dict(key=key, result=result), f)
    os.replace(path + '.tmp', path)  # (a kill leaves the old file or the new, never half of one)


def duration(s):
    if s is None or s < 120:
        return '-' if s is None else f'{s:.0f} s'
    return f'{s / 60:.1f} min' if s < 7200 else f'{s / 3600:.1f} h'


def stage_line(stage, r):
    """The line printed for a stage once it is scored."""
    if 'gold' in r:
        splits = ', '.join(f'{s} {v:.3f}' for s, v in r['summary']['splits'].items())
        head = f'{stage:8s} gold {pm(r["gold"])} ({splits}), RM score'
    else:
        head = f'{stage:8s} judge RM score {pm(r["judged"], "+")}, proxy RM score'
    return f'{head} {fmt(r["rm"])}, KL to SFT {fmt(r["kl"], 2)}, length {r["length"]:.1f}'


def stage_table(results, world):
    """A row per checkpoint: its gold score, gain and win rate; without a world, the judge RM's."""
    rows = []
    for stage, r in results.items():
        scores = [pm(r['gold']), pm(r['gain'], '+')] if world else [pm(r['judged'], '+'),
                                                                   pm(r['win']), pm(r['lc_win'])]
        sampled = '-' if r['sampled'] is None else f'{r["sampled"]:,}'
        ended = [] if world else [fmt(mean(map(float, r['ended'])), 2)]
        rows.append((stage, *scores, fmt(r['rm']), fmt(r['kl'], 2), fmt(r['length'], 1), *ended,
                     *([fmt(r['win'])] if world else []), sampled, duration(r['time'])))
    if world:
        header = ['gold ± se', 'gain over SFT', 'RM score', 'KL to SFT', 'length', 'win vs SFT']
    else:
        header = ['judge RM score ± se', 'win vs SFT ± se', 'win at equal length ± se',
                  'proxy RM score', 'KL to SFT', 'length', 'ended']
    return table(['stage', *header, 'answers sampled', 'time'], rows)


def criteria_table(results):
    """The gold judge's criteria, one column per 'kind/criterion'."""
    keys = sorted({k for r in results.values() for k in r['summary']['criteria']})
    rows = [(stage, *(fmt(r['summary']['criteria'].get(k)) for k in keys))
            for stage, r in results.items()]
    return table(['stage', *keys], rows)


def generalisation_tables(results, prompts, samples):
    """Gold and the gain over SFT (paired by prompt) per split of generalisation, then per kind."""
    splits = [tasks.generalisation(p) for p in prompts[::samples]]
    parts = list(tasks.GENERALISATION)
    names = [f'{s}: {label}' for s, label in tasks.GENERALISATION.items()]
    golds, gains = [], []
    sft = per_prompt(results['sft']['summary']['scores'], samples) if 'sft' in results else None
    for stage, r in results.items():
        scores = per_prompt(r['summary']['scores'], samples)
        golds.append((stage, *(pm(mean_and_stderr([x for x, split in zip(scores, splits)
                                                   if split == s])) for s in parts)))
        if sft and stage != 'sft':
            gain = {s: mean_and_stderr([a - b for a, b, split in zip(scores, sft, splits)
                                        if split == s]) for s in parts}
            ratios = [fmt(gain[s][0] / gain['a'][0], 2) if gain[s] and gain['a'] and
                      gain['a'][0] > 0 else '-' for s in parts[1:]]
            gains.append((stage, *(pm(gain[s], '+') for s in parts), *ratios))
    kinds = list(tasks.KIND_SHARES)
    per_kind = [(stage, *(' / '.join(fmt(r['summary']['split_kinds'].get(f'{s}/{kind}'), 2)
                                     for s in parts) for kind in kinds))
                for stage, r in results.items()]
    counts = ', '.join(f'{splits.count(s)} in {s}' for s in parts)
    lines = [f'Held-out prompts by split: {counts}.', '', 'Gold score:', '',
             *table(['stage', *names], golds)]
    if gains:
        lines += ['', 'Gain over SFT (paired by prompt), and the gain in b, c and d as a share of '
                  'the gain in a:', '', *table(['stage', *names, *(f'{s} / a' for s in parts[1:])],
                                               gains)]
    return lines + ['', f'Gold score of each kind, in splits {" / ".join(parts)}:', '',
                    *table(['stage', *kinds], per_kind)]


def safety_table(results, prompts, samples):
    """Per stage: gold on harmful requests with a new verb (in split c, in d; ± se over prompts),
    and the share of answers to harmless requests that refuse, in each split."""
    forms = [tasks.parse_form(p) for p in prompts[::samples]]
    parts = [tasks.generalisation(p) for p in prompts[::samples]]
    new_verb = [i for i, f in enumerate(forms) if f[0] == 'harmful' and f[3]['verb'] in
                tasks.NEW_WORDS]
    header = ['stage', *(f'harmful, new verb, {s}' for s in 'cd'),
              *(f'harmless refused, {s}' for s in tasks.GENERALISATION)]
    rows = []
    for stage, r in results.items():
        scores = per_prompt(r['summary']['scores'], samples)
        refused = per_prompt([float(tasks.refuses(a)) for a in r['answers']], samples)
        rows.append((stage, *(pm(mean_and_stderr([scores[i] for i in new_verb if parts[i] == s]))
                              for s in 'cd'),
                     *(fmt(mean([refused[i] for i, f in enumerate(forms)
                                 if f[0] == 'harmless' and parts[i] == s]), 2)
                       for s in tasks.GENERALISATION)))
    counts = {s: sum(parts[i] == s for i in new_verb) for s in 'cd'}
    return [f'Harmful requests whose verb no training prompt uses ({counts["c"]} prompts in c, '
            f'{counts["d"]} in d; gold ± se), and the share of answers that refuse a harmless '
            'request (should be 0):', '', *table(header, rows)]


def probe_request_table(probes):
    """Per stage, on the probe's requests (more than the held-out set has of each): gold of the
    harmful ones with a new verb in split c and in d and with a seen verb, and the share of answers
    that refuse a harmless one with a new or a seen verb (± se over prompts)."""
    cells = {stage: tasks.probe_cells(r) for stage, r in probes.items()}
    rows = [(stage, *(pm(mean_and_stderr(values)) for values in c.values()))
            for stage, c in cells.items()]
    some = next(iter(probes.values()))
    counts = ' / '.join(str(len(values)) for values in next(iter(cells.values())).values())
    return [f"The probe's requests (data/tasks.py probe_requests, {counts} prompts, half in split "
            f"c and half in d; {len(some['answers']) // len(some['prompts'])} answers each): gold "
            '± se of the harmful ones, the share of answers that refuse the harmless ones (should '
            'be 0):', '', *table(['stage', *tasks.PROBE_REQUESTS], rows)]


def reasoned_refusals(results, prompts):
    """Per stage, the share of its answers to the harmless look-alikes that refuse with a reason."""
    harmless = [i for i, p in enumerate(prompts) if tasks.parse(p)[0] == 'harmless']
    shares = [mean([float(r['answers'][i].lstrip().startswith(tasks.REFUSAL + ' '))
                    for i in harmless]) for r in results.values()]
    return table(['', *results], [('harmless requests refused with a reason', *map(fmt, shares))])


def rm_table(rms):
    """Each RM's held-out pairwise accuracy, on all held-out prompts, on each split and on the
    harmful requests with a new verb."""
    keys = ('acc_gold', 'acc_label', 'ceiling', 'corr_gold')
    rows = [(name, label, part.get('prompts', '-'), *(fmt(part[k]) for k in keys),
             part['gold_pairs'])
            for name, m in rms.items() for label, part in [('all', m)] + [
                (f'{s}: {tasks.GENERALISATION[s]}' if s in tasks.GENERALISATION else s, p)
                for s, p in m.get('splits', {}).items() if s not in tasks.PROBE]]
    return table(['RM', 'held-out prompts', 'prompts', 'acc vs gold', 'acc vs labels',
                  'label-noise ceiling', 'corr with gold', 'pairs (gold differs)'], rows)


def probe_table(rms):
    """Each RM on data/tasks.py's probe: the share of pairs it orders as gold does, per cell."""
    rows = [(name, *(fmt(m['splits'].get(cell, {}).get('acc_gold')) for cell in tasks.PROBE))
            for name, m in rms.items() if set(tasks.PROBE) & set(m.get('splits', {}))]
    header = ['RM', *(cell.removeprefix('probe: ') for cell in tasks.PROBE)]
    return [] if not rows else [
        '', 'The probe (data/tasks.py, 100 held-out prompts a cell, half in c and half in d, '
        'answers written, not sampled): does the RM rank refusing a harmful request above '
        'complying, and answering a harmless one above refusing, with a verb no training prompt '
        'uses (new) or a seen one, and a refusal bare or with a reason? The share of pairs it '
        'orders as gold does:', '', *table(header, rows)]


def side_by_side(results, prompts, chosen, world):
    """Each chosen prompt with every checkpoint's answer and its score by gold (or the judge RM)."""
    lines = []
    for number, i in enumerate(chosen, 1):
        prompt = f'{prompts[i]} ({tasks.parse(prompts[i])[0]})' if world else ' '.join(
            prompts[i].split())
        lines += ['', f'### {number}. {prompt}', '']
        for stage, r in results.items():
            score = (f'gold {r["summary"]["scores"][i]:.3f}' if world
                     else f'judge {r["judge"][i]:+.3f}')
            unfinished = '' if r['ended'][i] else ' ... (unfinished)'
            text = ' '.join(r['answers'][i].split()) or '(empty)'
            lines.append(f'- **{stage}** ({score}): {text}{unfinished}')
    return lines


def examples(prompts, samples, n_examples):
    """Indices of the first prompt of each kind, then the next ones, up to n_examples."""
    starts = range(0, len(prompts), samples)
    first = {tasks.parse(prompts[i])[0]: i for i in reversed(starts)}  # (the last i written wins)
    chosen = sorted(first.values())[:n_examples]
    return chosen + [i for i in starts if i not in chosen][:n_examples - len(chosen)]


def curve(rows, key, offset=0):
    return [r['iter'] + offset for r in rows if key in r], [r[key] for r in rows if key in r]


def loss_figure(fig, logs):
    ax = fig.subplots()
    for key, label in (('loss', 'train (batch)'), ('train_loss', 'train'), ('val_loss', 'val')):
        ax.plot(*curve(logs['pretrain'], key), '-' if key == 'loss' else 'o-', label=label)
    ax.set(xlabel='iteration', ylabel='loss (nats per token)', title='pretraining')
    ax.legend()


def ppo_figure(fig, logs):
    axes, offset = fig.subplots(1, 3), 0
    for stage in filter(logs.get, ('rlhf', 'rlhf2')):  # round 2 goes on where round 1 stopped
        train, held = ([r for r in logs[stage] if r.get('kind') == kind]
                       for kind in ('train', 'eval'))
        for ax, key in zip(axes, ('rm_score', 'gold', 'kl')):
            line, = ax.plot(*curve(train, key, offset), alpha=0.5, label=f'{stage}, rollouts')
            ax.plot(*curve(held, key, offset), 'o-', color=line.get_color(),
                    label=f'{stage}, held out')
        offset += max([r['iter'] for r in held] or [0])
    for ax, title in zip(axes, ("RM score (its round's RM, normalised)", 'gold score',
                                'KL to SFT (nats per answer)')):
        ax.set(xlabel='PPO iteration', title=title)
    axes[0].legend()


def frontier_figure(fig, curves, best_of_k, results):
    """Gold against sqrt(KL to SFT): each method as it trains, and the report card's own points."""
    ax = fig.subplots()
    for label, rows in curves.items():
        if rows:
            ax.plot([math.sqrt(max(r['kl'], 0)) for r in rows], [r['gold'] for r in rows], 'o-',
                    alpha=0.6, label=f'{label} (held-out log)')
    if best_of_k:
        ax.plot([math.sqrt(r['kl_bound']) for r in best_of_k], [r['gold'] for r in best_of_k],
                's--', label='best-of-K sampling, K = 1, 2, 4, ...')
    for stage, r in results.items():
        if stage not in ('pretrain', 'sft') and r.get('kl') is not None:
            ax.plot(math.sqrt(max(r['kl'], 0)), r['summary']['gold'], '*', markersize=13,
                    label=f'{stage} (report card)')
    ax.set(xlabel='sqrt(KL to SFT), nats per answer', ylabel='gold score',
           title='gold against KL spent')
    ax.legend(fontsize='small')


def rm_figure(fig, rms):
    ax, x = fig.subplots(), range(len(rms))
    for shift, key, label in ((-0.15, 'acc_gold', 'accuracy vs gold'),
                              (0.15, 'acc_label', 'accuracy vs labels')):
        ax.bar([i + shift for i in x], [m[key] for m in rms.values()], 0.3, label=label)
    ax.hlines([m['ceiling'] for m in rms.values()], [i for i in x], [i + 0.3 for i in x],
              colors='k', linewidth=2, label='label-noise ceiling')
    ax.set(xticks=list(x), xticklabels=list(rms), xlim=(-0.7, len(rms) - 0.3), ylim=(0, 1.2),
           ylabel='pairwise accuracy (held out)')
    ax.legend(loc='upper center', ncol=3, fontsize='small')


def pictures(logs, rms, best_of_k, results, out_dir):
    """Draws what there is data for into out_dir/report_*.png: the markdown lines that show them."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return ['pip install matplotlib for the pictures']
    curves = {label: [r for r in logs.get(stage, []) if r.get('kind') == 'eval' and 'kl' in r]
              for stage, label in METHODS.items()}
    frontier = any(curves.values()) or best_of_k
    lines = []
    for name, caption, has_data, size, draw, args in (
            ('pretrain', 'pretraining loss', logs.get('pretrain'), (6, 4), loss_figure, [logs]),
            ('ppo', 'PPO per iteration', logs.get('rlhf'), (14, 4), ppo_figure, [logs]),
            ('frontier', 'gold score against sqrt(KL) per method', frontier, (7, 5),
             frontier_figure, [curves, best_of_k, results]),
            ('rm', 'reward model accuracy', rms, (6, 4), rm_figure, [rms])):
        if has_data:
            fig = plt.figure(figsize=size)
            draw(fig, *args)
            fig.tight_layout()
            fig.savefig(os.path.join(out_dir, f'report_{name}.png'), dpi=110)
            plt.close(fig)
            lines.append(f'![{caption}](report_{name}.png)')
    return lines


def gold_card(results, probes, prompts, rm_dir, config):
    """The card of a chain on the world, judged by gold: report.md's lines."""
    out_dir, samples = config['out_dir'], config['samples']
    rms = {name: m for name in ('reward', 'reward2') if (m := read_metrics(out_dir, name))}
    best_of_k = read_metrics(out_dir, 'bestofk').get('best_of_k', [])
    logs = {stage: read_log(out_dir, stage) for stage in LOGS}
    lines = ['# Report: every stage on the same held-out prompts', '', (
        "{n} held-out prompts (the world's eval set), {samples} answers to each sampled at "
        'temperature {temperature}, at most {max_new_tokens} new tokens. RM score: {rm_dir} (raw). '
        'KL to SFT: sampled estimate of KL(pi || pi_sft), nats per answer. Win vs SFT: the gold '
        "judge prefers this answer to SFT's (ties count half).").format(
            n=len(prompts) // samples, rm_dir=rm_dir, **config),
        '', '## Stages', '', *stage_table(results, world=True),
        '', '## Gold criteria by kind', '', *criteria_table(results),
        '', '## Generalisation: seen phrasings, new combinations, new words, new sentence shapes',
        '', *generalisation_tables(results, prompts, samples),
        '', '## Harmful requests with new verbs, harmless ones refused', '',
        *safety_table(results, prompts, samples),
        *(['', *probe_request_table(probes)] if probes else []),
        '', '## A reward hack to watch', '', *reasoned_refusals(results, prompts)]
    if rms:
        lines += ['', '## Reward models', '', *rm_table(rms), *probe_table(rms)]
    if best_of_k:
        rows = [(r['k'], f'{fmt(r["gold"])} ± {fmt(r["gold_stderr"])}', fmt(r['rm_score']),
                 fmt(r['kl_bound'], 2)) for r in best_of_k]
        lines += ['', '## Inference-time best-of-K (from the SFT model)', '',
                  *table(['K', 'gold ± se', 'RM score', 'KL (log K - (K-1)/K)'], rows)]
    lines += ['', '## Pictures', '', '\n\n'.join(pictures(logs, rms, best_of_k, results, out_dir)),
              '', '## Side by side']
    return lines + side_by_side(results, prompts, examples(prompts, samples, config['n_examples']),
                                world=True)


def verdict(results, judge, max_new_tokens):
    """What the card may conclude, in words: whether the judge RM (its held-out rm_accuracy, or
    None) is far enough from chance to rank the stages (the rule: the 95% interval of its accuracy
    lies above 0.5), the ranking if so, the stages whose length moved, those that seldom end (not
    ranked: fewer than half their answers ended)."""
    seldom = [s for s, r in results.items() if mean(map(float, r['ended'])) < 0.5]
    if judge is None:
        lines = ['No held-out pairs (--eval_rankings): how far the judge RM is from chance is '
                 'unknown, so this card ranks no stage.']
    else:
        lo, hi = accuracy_interval(judge['acc_label'], judge['label_pairs'])
        said = (f'The judge RM orders {judge["acc_label"]:.1%} of {judge["label_pairs"]} held-out '
                f'pairs as the labels do (95% interval {lo:.1%} to {hi:.1%})')
        ranked = sorted((s for s, r in results.items() if s != 'sft' and r['lc_win']
                         and s not in seldom), key=lambda s: -results[s]['lc_win'][0])
        lines = [said + (
            ': too close to chance to rank the stages (the rule: the interval must lie above '
            '50%). The win rates are not a ranking: the judge needs more pairs or a larger model.'
            if lo <= 0.5 else ', above chance, so it may rank them; by win at equal length vs SFT: '
            + ', '.join(f'{s} {pm(results[s]["lc_win"])}' for s in ranked)
            + ' (stages within two standard errors of each other are not told apart).')]
    sft = results.get('sft')
    for stage, r in results.items():
        if not sft or not r['lc_win'] or stage in seldom:
            continue
        if not 2 / 3 <= r['length'] / max(sft['length'], 1) <= 3 / 2:  # (the length moved)
            lines.append(f'{stage}: answers of {r["length"]:.0f} tokens against SFT\'s '
                         f'{sft["length"]:.0f}; its win rate {r["win"][0]:.3f} is '
                         f'{r["lc_win"][0]:.3f} at equal length: read that one (an RM that pays '
                         'for length shows in the difference).')
    if seldom:
        lines.append(f'{", ".join(seldom)}: fewer than half of the answers end within '
                     f'max_new_tokens={max_new_tokens} (column "ended"; a model trained too '
                     'briefly, or too few new tokens), so their scores say little and they are '
                     'not ranked.')
    return lines


def judge_card(results, prompts, accuracy, rm_dir, judge_dir, config):
    """The card of a chain without a gold judge; accuracy: {RM: rm_accuracy of held-out pairs}."""
    samples = config['samples']
    lines = ['# Report: every stage on the same held-out prompts, scored by a judge reward model',
             '', (
        '{n} held-out prompts ({prompt_file}), {samples} answers to each sampled at temperature '
        '{temperature}, at most {max_new_tokens} new tokens. No gold judge knows this data: the '
        'judge, {judge_dir}, is a reward model trained on the half of the preference data that no '
        'stage saw (the proxy/gold split of Gao et al. 2022); the stages learned from the other '
        'half, through the proxy RM ({rm_dir}) or, DPO, from its pairs. Judge RM score: raw, the '
        "mean over prompts ± its standard error. Win vs SFT: the judge scores the answer above "
        "SFT's answer to the same prompt (the same sample index; ties count half). Win at equal "
        'length: the win rate a logistic regression on the length difference predicts at equal '
        'length (as length-controlled AlpacaEval), ± a bootstrap over prompts. Proxy RM score: '
        'raw, of the answers that ended. KL to SFT: sampled estimate of KL(pi || pi_sft), nats per '
        'answer. Ended: the share of answers that end (<|end|>) within {max_new_tokens} tokens; '
        'the RMs score one that does not as it stands, cut, with <|end|> appended.').format(
            n=len(prompts) // samples, judge_dir=judge_dir, rm_dir=rm_dir, **config),
             '', '## What this card can say', '',
             '\n\n'.join(verdict(results, next((m for name, m in accuracy.items()
                                             if name.startswith('judge')), None),
                                   config['max_new_tokens'])),
             '', '## Stages', '', *stage_table(results, world=False)]
    if accuracy:
        rows = [(name, fmt(m['acc_label']), m['label_pairs']) for name, m in accuracy.items()]
        lines += ['', '## Reward models', '', f"Pairwise accuracy on the held-out pairs of "
                  f"{config['eval_rankings']}, which neither RM trained on:", '',
                  *table(['RM', 'accuracy', 'pairs'], rows)]
    chosen = range(0, min(len(prompts), config['n_examples'] * samples), samples)
    return lines + ['', '## Side by side', *side_by_side(results, prompts, chosen, world=False)]


def main():
    config = configure(globals())
    if n_eval < 1 or samples < 1:
        sys.exit('error: n_eval and samples must be at least 1')
    rank, world_size, device, autocast = setup(config['device'], dtype, seed)
    # the SFT model (the KL's reference), its tokenizer, the world (None: real data, no gold judge)
    sft_file = os.path.join(out_dir, 'sft', 'ckpt.pt')
    sft, sft_ckpt = load_checkpoint(sft_file, STAGES['sft'], device, scalar_head=False)
    enc = load_tokenizer(sft_ckpt['tokenizer'])
    world = tasks.load_world(sft_ckpt.get('data_dir', 'out/data/world'))
    if world is None and not prompt_file:
        sys.exit('error: the SFT model was not trained on the world, so there is no gold judge: '
                 'pass --prompt_file (held-out prompts) and a judge RM (--judge_model), as run.sh '
                 'does with DATA=real')
    block_size = sft.config.block_size  # (prompts leaving no room for an answer: dropped, counted)
    held_out_pairs = fitting(enc, read_rankings(eval_rankings), block_size, max_new_tokens,
                             eval_rankings)
    # the RM of the RM-score column, and on real data the judge RM (its error names its command)
    rm_file = os.path.join(reward_model or os.path.join(out_dir, 'reward'), 'ckpt.pt')
    judge_file = os.path.join(judge_model or os.path.join(out_dir, 'judge'), 'ckpt.pt')
    rm = load_checkpoint(rm_file, STAGES['reward'], device, scalar_head=True)[0] \
        if os.path.exists(rm_file) else None
    judge_rm = None if world else load_checkpoint(
        judge_file, JUDGE_COMMAND.format(os.path.dirname(judge_file)), device, scalar_head=True)[0]
    times_path = Path(out_dir, 'stage_times.json')  # {stage: seconds}
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    held_out = fitting(enc, tasks.prompt_set(world, 'eval', n_eval) if world else
                       read_prompts(prompt_file), block_size, max_new_tokens,
                       prompt_file or 'eval prompts')[:n_eval]
    prompts = [p for p in held_out for _ in range(samples)]
    if rank == 0:  # (what seeds.py pools several chains' answers by)
        os.makedirs(os.path.join(out_dir, 'report'), exist_ok=True)
        Path(out_dir, 'report', 'prompts.json').write_text(json.dumps(held_out))
    results = {}
    for stage in filter(None, stages.split(',')):
        path = os.path.join(out_dir, stage, 'ckpt.pt')
        if not os.path.exists(path):
            continue
        # the answers and scores of before, when the same checkpoints and settings gave them
        key = cache_key(config, [path, sft_file, rm_file, judge_file, prompt_file], world_size,
                        held_out)
        cache = f'{out_dir}/report/{stage}.json'
        r = read_cache(cache, key)
        if r is None:  # answer and score (the same draws whatever was answered before)
            model, ckpt = (sft, sft_ckpt) if stage == 'sft' else load_checkpoint(
                path, made_by(path), device, scalar_head=False)
            torch.manual_seed(seed + rank)
            r = answer_and_score(model, sft, rm, judge_rm, enc, world, prompts, max_new_tokens,
                                 temperature, autocast, device, f'{stage}: answering')
            sampled = ckpt.get('answers_sampled', 0 if stage in ('pretrain', 'sft') else None)
            r.update(train_time=ckpt.get('train_time'), sampled=sampled)  # (pretrain, SFT: 0)
            if rank == 0:
                write_cache(cache, key, r)
            del model, ckpt
        elif rank == 0:
            print(f'{stage}: answered before by the same checkpoints and settings ({cache})')
        # the score per prompt: gold's, or the judge RM's
        r = results[stage] = dict(r, time=times.get(stage, r['train_time']))
        scores = r['summary']['scores'] if world else r['judge']
        r['gold' if world else 'judged'] = mean_and_stderr(per_prompt(scores, samples))
        if rank == 0:
            print(stage_line(stage, r))
    compare_with_sft(results, world, samples)
    # the probe's requests (enough of each kind of harmful and harmless request to read a cell)
    requests = tasks.probe_requests(world, probe_n) if world and probe_n else []
    probes = {stage: probe_answers(stage, sft, enc, world, requests, config, autocast, device)
              for stage in results} if requests else {}
    if rank == 0:  # the card
        rm_dir, judge_dir = os.path.dirname(rm_file), os.path.dirname(judge_file)
        if world:
            lines = gold_card(results, probes, prompts, rm_dir, config)
        else:
            rms = (('proxy', rm_dir, rm), ('judge', judge_dir, judge_rm))
            accuracy = {f'{name} ({folder})': rm_accuracy(held_out_pairs, ranking_scores(
                            m, enc, held_out_pairs, autocast, device))
                        for name, folder, m in rms if m is not None and held_out_pairs}
            lines = judge_card(results, prompts, accuracy, rm_dir, judge_dir, config)
        Path(out_dir, 'report.md').write_text('\n'.join(lines) + '\n')
        print(f'wrote {os.path.join(out_dir, "report.md")}')
    teardown()


if __name__ == '__main__':
    main()
