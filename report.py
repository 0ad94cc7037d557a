"""
The chain's report card: every checkpoint answers the SAME held-out prompts (the world's 'eval' set),
and the gold judge, the round-1 reward model and the SFT model look at the answers. Writes
out/report.md, and the pictures out/report_*.png when matplotlib is installed.

  python report.py                                 # every stage of out/ that has a checkpoint
  python report.py --n_eval=50 --stages=sft,rlhf   # fewer prompts, some stages
  torchrun --nproc_per_node=8 report.py            # each process answers a share of the prompts

Each checkpoint answers each prompt `samples` times: one sampled answer per prompt is too noisy to
tell stages apart (a difference of 0.05 can come and go). The main table has a row per checkpoint (the
pretrained model is prompted with the chat template too): the gold judge's score (data/tasks.py) ± its
standard error over prompts; the gain over SFT, the mean over prompts of (this checkpoint's mean score
- SFT's) ± its standard error (paired: the same prompts); the round-1 reward model's raw score of the answers
that ended with <|end|>; KL to SFT, the mean of log pi(answer) - log pi_sft(answer) (<|end|> included), the
sampled estimate of KL(pi || pi_sft) in nats per answer; the length in tokens; the win rate against SFT (per
prompt 1 if the gold judge scores the answer above SFT's, 0.5 if equal, 0 if below); the answers the stage
sampled itself to learn (the RM's ranked answers, which best-of-K, DPO and the RL methods all use, are not
counted: they are the shared labels); the stage's wall time (out/stage_times.json, which run.sh writes, else
the checkpoint's train_time). After the criteria, a row follows a reward hack: how often each checkpoint
refuses a harmless request with a reason. The frontier picture draws gold against sqrt(KL to SFT) for every
method, the shape Gao et al. 2022 fit: PPO and GRPO/RLOO over iterations, best-of-K over K, DPO over its epochs.

A chain of real data (run.sh with DATA=real) has no gold judge. Its held-out prompts come from a file
(--prompt_file, data/hh_rlhf.py's eval_prompts.jsonl), and a judge reward model scores the answers: one
trained on the half of the preference data that no stage saw (the proxy/gold split of Gao et al. 2022;
--judge_model, out_dir/judge). Its card has a row per checkpoint: the judge's raw score ± its standard error
over prompts; the win rate against SFT by the judge (per prompt and sample index, 1 if the judge scores the
answer above SFT's answer, 0.5 if equal, 0 if below; ± its standard error over prompts); the proxy RM's score,
KL to SFT, length, answers sampled and time as above; then both RMs' accuracy on held-out ranked pairs
(--eval_rankings) and the answers side by side.

A checkpoint's answers and scores are kept in out_dir/report/<stage>.json, with what they depend on (the
checkpoints read, by size and modification time, and the settings): run again after a kill, or with a new
stage, and the checkpoints answered before are not asked again.
"""
import json
import math
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from bestofk import answer_logprob
from data import tasks
from data.hh_rlhf import read_prompts
from model import (all_gather, answer_text, configure, input_stamps, load_checkpoint, load_tokenizer, read_jsonl,
                   sample_answers, setup, teardown)
from reward import evaluate as rm_evaluate, is_ranking, score_pairs

# ----------------------------------------------------------------------------- config
out_dir = 'out'               # reads out_dir/<stage>/ckpt.pt, writes out_dir/report.md and out_dir/report_*.png
stages = 'pretrain,sft,bestofk,dpo,rlhf,grpo,rloo,rlhf2'  # the rows, in this order (each only if its checkpoint exists)
reward_model = ''             # the RM of the RM-score column; '': out_dir/reward (round 1)
n_eval = 400                  # held-out prompts
samples = 8                   # answers per prompt and checkpoint
max_new_tokens = 128
temperature = 1.0
n_examples = 5                # prompts shown with each checkpoint's answer side by side
# a model not trained on the world (no gold judge)
prompt_file = ''              # the held-out prompts, JSONL of {"prompt": "text"} (data/hh_rlhf.py's eval_prompts.jsonl)
judge_model = ''              # the judge RM that scores every stage, trained on data no stage saw; '': out_dir/judge
eval_rankings = ''            # held-out ranked pairs (reward.py's format): both RMs' accuracy on them; '': none
# system
device = 'auto'
dtype = 'auto'
seed = 1337
# -----------------------------------------------------------------------------


MADE_BY = dict(pretrain='python pretrain.py', sft='python sft.py', bestofk='python bestofk.py', dpo='python dpo.py',
               rlhf='python rlhf.py', grpo='python rlhf.py --advantage=grpo --out_dir=out/grpo',
               rloo='python rlhf.py --advantage=rloo --out_dir=out/rloo', rlhf2='python rlhf.py --init_from=out/rlhf --reward_model=out/reward2 --out_dir=out/rlhf2')


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def fmt(x, digits=3):
    return '-' if x is None else f'{x:.{digits}f}'


def duration(s):
    return '-' if s is None else f'{s:.0f} s' if s < 120 else f'{s / 60:.1f} min' if s < 7200 else f'{s / 3600:.1f} h'


def rm_path():
    return os.path.join(reward_model or os.path.join(out_dir, 'reward'), 'ckpt.pt')


def judge_path():
    return os.path.join(judge_model or os.path.join(out_dir, 'judge'), 'ckpt.pt')


def read_metrics(stage):
    """ckpt['metrics'] of out_dir/<stage>/ckpt.pt ({} if there is none)."""
    path = Path(out_dir, stage, 'ckpt.pt')
    return (torch.load(path, map_location='cpu', weights_only=True).get('metrics') or {}) if path.exists() else {}


def read_log(stage):
    """The rows of out_dir/<stage>/metrics.jsonl ([] if absent; a line cut short by a kill is skipped)."""
    path = Path(out_dir, stage, 'metrics.jsonl')
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    return [json.loads(line) for line in lines if line.strip() and line.endswith('\n')]


@torch.no_grad()
def evaluate(model, sft, rm, judge, enc, world, prompts, autocast, dev, desc):
    """One checkpoint's answers to the prompts (each rank a share, gathered in prompt order), judged: a dict of
    the gold judge's summary (None without a world), the judge RM's score of every answer (None without
    one), the mean RM score, KL to SFT and length, and the answers."""
    rank, size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    mine = prompts[rank::size]
    with autocast:
        tokens = sample_answers(model.eval(), enc, mine, max_new_tokens, temperature, progress=desc if rank == 0 else None)
    ended = [t[-1:] == [enc.encode_single_token('<|end|>')] for t in tokens]
    pairs = [(p, answer_text(enc, t)) for p, t in zip(mine, tokens)]
    rewards = score_pairs(rm, enc, pairs, autocast, dev) if rm is not None else [None] * len(pairs)
    rewards = [r if e else None for r, e in zip(rewards, ended)]  # (an answer that never ended has no RM score)
    judged = score_pairs(judge, enc, pairs, autocast, dev) if judge is not None else [None] * len(pairs)  # (as gold: all)
    kls = [a - b for a, b in zip(answer_logprob(model, enc, pairs, autocast, dev),
                                 answer_logprob(sft, enc, pairs, autocast, dev))]
    rows = sorted(all_gather(zip(range(rank, len(prompts), size), pairs, ended, rewards, kls, map(len, tokens), judged)))
    answers = [row[1][1] for row in rows]
    return dict(summary=tasks.summarize(world, prompts, answers) if world else None, answers=answers,
                ended=[row[2] for row in rows], rm=mean(row[3] for row in rows), kl=mean(row[4] for row in rows),
                length=mean(row[5] for row in rows), judge=[row[6] for row in rows] if judge is not None else None)


def cache_key(config, stage, world_size):
    """What a checkpoint's answers and scores depend on: the checkpoints and prompt file read (size and
    modification time), the settings that change what is sampled or scored, the number of processes."""
    paths = [os.path.join(out_dir, name, 'ckpt.pt') for name in (stage, 'sft')] + [rm_path(), judge_path(), prompt_file]
    settings = {k: v for k, v in config.items() if k not in ('out_dir', 'stages', 'n_examples', 'eval_rankings')}
    return json.loads(json.dumps(dict(inputs=input_stamps(filter(os.path.exists, paths)), config=settings,
                                      world_size=world_size)))  # (as it reads back from the file)


def read_cache(stage, key):
    """The result cached in out_dir/report/<stage>.json for this key, or None (none, another key, unreadable)."""
    path = Path(out_dir, 'report', f'{stage}.json')
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return cached['result'] if isinstance(cached, dict) and cached.get('key') == key else None


def write_cache(stage, key, result):
    path = os.path.join(out_dir, 'report', f'{stage}.json')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + '.tmp', 'w') as f:
        json.dump(dict(key=key, result=result), f)
    os.replace(path + '.tmp', path)  # (a kill leaves the old file or the new, never half of one)


def table(header, rows):
    return ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)] + \
           ['| ' + ' | '.join(map(str, row)) + ' |' for row in rows]


def per_prompt(scores):
    """The mean score of each prompt's `samples` answers (they come prompt after prompt)."""
    return [sum(scores[i:i + samples]) / samples for i in range(0, len(scores), samples)]


def mean_and_stderr(xs):
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / max(len(xs) - 1, 1) / len(xs))


def stage_tables(results):
    """The main table, then the gold judge's criteria, one column per 'kind/criterion'."""
    main = [(stage, '{:.3f} ± {:.3f}'.format(*r['gold']), '-' if r['gain'] is None else '{:+.3f} ± {:.3f}'.format(*r['gain']),
             fmt(r['rm']), fmt(r['kl'], 2), fmt(r['length'], 1), fmt(r['win']),
             '-' if r['sampled'] is None else f'{r["sampled"]:,}', duration(r['time']))
            for stage, r in results.items()]
    keys = sorted({k for r in results.values() for k in r['summary']['criteria']})
    per = [(stage, *(fmt(r['summary']['criteria'].get(k)) for k in keys)) for stage, r in results.items()]
    return (table(['stage', 'gold ± se', 'gain over SFT', 'RM score', 'KL to SFT', 'length', 'win vs SFT',
                   'answers sampled', 'time'], main)
            + ['', '## Gold criteria by kind', ''] + table(['stage', *keys], per))


def generalisation_tables(results, prompts):
    """Per stage and split of generalisation (data/tasks.py: a seen phrasings, b new combinations, c new
    words): the gold score, the gain over SFT paired by prompt (each ± its standard error), then the
    gold score of each kind in each split."""
    splits = [tasks.generalisation(p) for p in prompts[::samples]]
    names = [f'{s}: {label}' for s, label in tasks.GENERALISATION.items()]
    part = lambda xs, split: [x for x, s in zip(xs, splits) if s == split]
    golds, gains = [], []
    sft = per_prompt(results['sft']['summary']['scores']) if 'sft' in results else None
    for stage, r in results.items():
        scores = per_prompt(r['summary']['scores'])
        golds.append((stage, *('{:.3f} ± {:.3f}'.format(*mean_and_stderr(part(scores, s))) for s in tasks.GENERALISATION)))
        if sft and stage != 'sft':
            gain = [a - b for a, b in zip(scores, sft)]
            by_split = {s: mean_and_stderr(part(gain, s)) for s in tasks.GENERALISATION}
            ratio = lambda s: fmt(by_split[s][0] / by_split['a'][0], 2) if by_split['a'][0] > 0 else '-'
            gains.append((stage, *('{:+.3f} ± {:.3f}'.format(*by_split[s]) for s in tasks.GENERALISATION),
                          ratio('b'), ratio('c')))
    kinds = list(tasks.KIND_SHARES)
    per_kind = [(stage, *(' / '.join(fmt(r['summary']['split_kinds'].get(f'{s}/{kind}'), 2) for s in tasks.GENERALISATION)
                          for kind in kinds)) for stage, r in results.items()]
    lines = [f'{splits.count("a")}, {splits.count("b")} and {splits.count("c")} of the prompts in splits a, b and c.',
             '', 'Gold score:', '', *table(['stage', *names], golds)]
    if gains:
        lines += ['', 'Gain over SFT (paired by prompt), and the gain in b and in c as a share of the gain in a:', '',
                  *table(['stage', *names, 'b / a', 'c / a'], gains)]
    return lines + ['', 'Gold score of each kind, in splits a / b / c:', '', *table(['stage', *kinds], per_kind)]


def reasoned_refusals(results, prompts):
    """Per stage, the share of its answers to the harmless look-alikes that refuse with a reason, as a
    harmful request is refused: the round-1 RM scores those above a helpful answer (README, the report card)."""
    harmless = [i for i, p in enumerate(prompts) if tasks.parse(p)[0] == 'harmless']
    shares = [mean([float(r['answers'][i].lstrip().startswith(tasks.REFUSAL + ' ')) for i in harmless])
              for r in results.values()]
    return table(['', *results], [('harmless requests refused with a reason', *map(fmt, shares))])


def rm_table(rms):
    """Each RM's held-out pairwise accuracy, on all held-out prompts and on each split of generalisation."""
    rows = [(name, label, *(fmt(part[k]) for k in ('acc_gold', 'acc_label', 'ceiling', 'corr_gold')), part['gold_pairs'])
            for name, m in rms.items()
            for label, part in (('all', m), *((f'{s}: {tasks.GENERALISATION[s]}', p) for s, p in m.get('splits', {}).items()))]
    return table(['RM', 'held-out prompts', 'acc vs gold', 'acc vs labels', 'label-noise ceiling', 'corr with gold',
                  'pairs (gold differs)'], rows)


def examples(results, prompts):
    """The first prompt of each kind, then the next ones, up to n_examples, with each checkpoint's first
    answer (prompts: each held-out prompt `samples` times in a row)."""
    first = {}
    for i in range(0, len(prompts), samples):
        first.setdefault(tasks.parse(prompts[i])[0], i)
    chosen = sorted(first.values())[:n_examples]
    chosen += [i for i in range(0, len(prompts), samples) if i not in chosen][:n_examples - len(chosen)]
    lines = []
    for number, i in enumerate(chosen, 1):
        lines += ['', f'### {number}. {prompts[i]} ({tasks.parse(prompts[i])[0]})', '']
        for stage, r in results.items():
            text = (' '.join(r['answers'][i].split()) or '(empty)') + ('' if r['ended'][i] else ' ... (unfinished)')
            lines.append(f'- **{stage}** (gold {r["summary"]["scores"][i]:.3f}): {text}')
    return lines


def pictures(logs, rms, best_of_k, results):
    """Draws what there is data for into out_dir/report_*.png; returns the markdown lines that show them."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return ['pip install matplotlib for the pictures']
    lines = []

    def save(fig, name, caption):
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, f'report_{name}.png'), dpi=110)
        plt.close(fig)
        lines.append(f'![{caption}](report_{name}.png)')

    def curve(rows, key, offset=0):
        return [r['iter'] + offset for r in rows if key in r], [r[key] for r in rows if key in r]

    if logs.get('pretrain'):
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, label in (('loss', 'train (batch)'), ('train_loss', 'train'), ('val_loss', 'val')):
            ax.plot(*curve(logs['pretrain'], key), '-' if key == 'loss' else 'o-', label=label)
        ax.set(xlabel='iteration', ylabel='loss (nats per token)', title='pretraining')
        ax.legend()
        save(fig, 'pretrain', 'pretraining loss')
    if logs.get('rlhf'):  # round 2 goes on where round 1 stopped
        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        offset = 0
        for stage in filter(logs.get, ('rlhf', 'rlhf2')):
            train, held = ([r for r in logs[stage] if r.get('kind') == kind] for kind in ('train', 'eval'))
            for ax, key in zip(axes, ('rm_score', 'gold', 'kl')):
                line, = ax.plot(*curve(train, key, offset), alpha=0.5, label=f'{stage}, rollouts')
                ax.plot(*curve(held, key, offset), 'o-', color=line.get_color(), label=f'{stage}, held out')
            offset += max([r['iter'] for r in held] or [0])
        for ax, title in zip(axes, ("RM score (its round's RM, normalised)", 'gold score', 'KL to SFT (nats per answer)')):
            ax.set(xlabel='PPO iteration', title=title)
        axes[0].legend()
        save(fig, 'ppo', 'PPO per iteration')
    curves = {label: [r for r in logs.get(stage, []) if r.get('kind') == 'eval' and 'kl' in r]
              for stage, label in (('rlhf', 'PPO'), ('grpo', 'GRPO'), ('rloo', 'RLOO'), ('dpo', 'DPO'),
                                   ('rlhf_beta0', 'PPO, beta=0'))}
    if any(curves.values()) or best_of_k:  # the frontier: gold against sqrt(KL), each method as it trains
        fig, ax = plt.subplots(figsize=(7, 5))
        for label, rows in curves.items():
            if rows:
                ax.plot([math.sqrt(max(r['kl'], 0)) for r in rows], [r['gold'] for r in rows], 'o-', alpha=0.6,
                        label=f'{label} (held-out log)')
        if best_of_k:
            ax.plot([math.sqrt(r['kl_bound']) for r in best_of_k], [r['gold'] for r in best_of_k], 's--',
                    label='best-of-K sampling, K = 1, 2, 4, ...')
        for stage, r in results.items():  # the report card's own measurement of each checkpoint
            if stage not in ('pretrain', 'sft') and r.get('kl') is not None:
                ax.plot(math.sqrt(max(r['kl'], 0)), r['summary']['gold'], '*', markersize=13, label=f'{stage} (report card)')
        ax.set(xlabel='sqrt(KL to SFT), nats per answer', ylabel='gold score', title='gold against KL spent')
        ax.legend(fontsize='small')
        save(fig, 'frontier', 'gold score against sqrt(KL) per method')
    if rms:
        fig, ax = plt.subplots(figsize=(6, 4))
        x = range(len(rms))
        ax.bar([i - 0.15 for i in x], [m['acc_gold'] for m in rms.values()], 0.3, label='accuracy vs gold')
        ax.bar([i + 0.15 for i in x], [m['acc_label'] for m in rms.values()], 0.3, label='accuracy vs labels')
        ax.hlines([m['ceiling'] for m in rms.values()], [i for i in x], [i + 0.3 for i in x], colors='k',
                  linewidth=2, label='label-noise ceiling')
        ax.set(xticks=list(x), xticklabels=list(rms), xlim=(-0.7, len(rms) - 0.3), ylim=(0, 1.2),
               ylabel='pairwise accuracy (held out)')
        ax.legend(loc='upper center', ncol=3, fontsize='small')
        save(fig, 'rm', 'reward model accuracy')
    return lines


def write_report(results, prompts):
    rms = {name: m for name in ('reward', 'reward2') if (m := read_metrics(name))}
    best_of_k = read_metrics('bestofk').get('best_of_k', [])
    logs = {stage: read_log(stage) for stage in ('pretrain', 'rlhf', 'rlhf2', 'grpo', 'rloo', 'dpo', 'rlhf_beta0')}
    lines = ['# Report: every stage on the same held-out prompts', '',
             f"{len(prompts) // samples} held-out prompts (the world's eval set), {samples} answers to each sampled at "
             f'temperature {temperature}, '
             f'at most {max_new_tokens} new tokens. RM score: {os.path.dirname(rm_path())} (raw). KL to SFT: '
             "sampled estimate of KL(pi || pi_sft), nats per answer. Win vs SFT: the gold judge prefers this "
             "answer to SFT's (ties count half).", '', '## Stages', '', *stage_tables(results)]
    lines += ['', '## Generalisation: seen phrasings, new combinations, new words', '', *generalisation_tables(results, prompts)]
    lines += ['', '## A reward hack to watch', '', *reasoned_refusals(results, prompts)]
    if rms:
        lines += ['', '## Reward models', '', *rm_table(rms)]
    if best_of_k:
        lines += ['', '## Inference-time best-of-K (from the SFT model)', '', *table(
            ['K', 'gold ± se', 'RM score', 'KL (log K - (K-1)/K)'],
            [(r['k'], f'{fmt(r["gold"])} ± {fmt(r["gold_stderr"])}', fmt(r['rm_score']), fmt(r['kl_bound'], 2))
             for r in best_of_k])]
    lines += ['', '## Pictures', '', '\n\n'.join(pictures(logs, rms, best_of_k, results))]  # (a paragraph each)
    lines += ['', '## Side by side', *examples(results, prompts)]
    with open(os.path.join(out_dir, 'report.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')


def judge_table(results):
    """The card of a chain without a gold judge: a row per checkpoint, scored by the judge RM."""
    rows = [(stage, '{:+.3f} ± {:.3f}'.format(*r['judged']),
             '-' if r['win'] is None else '{:.3f} ± {:.3f}'.format(*r['win']), fmt(r['rm']), fmt(r['kl'], 2),
             fmt(r['length'], 1), '-' if r['sampled'] is None else f'{r["sampled"]:,}', duration(r['time']))
            for stage, r in results.items()]
    return table(['stage', 'judge RM score ± se', 'win vs SFT ± se', 'proxy RM score', 'KL to SFT', 'length',
                  'answers sampled', 'time'], rows)


def write_judge_report(results, prompts, accuracy):
    """out_dir/report.md of a chain without a gold judge; accuracy: {RM: reward.evaluate of the held-out pairs}."""
    lines = ['# Report: every stage on the same held-out prompts, scored by a judge reward model', '',
             f'{len(prompts) // samples} held-out prompts ({prompt_file}), {samples} answers to each sampled at '
             f'temperature {temperature}, at most {max_new_tokens} new tokens. No gold judge knows this data: the judge, '
             f'{os.path.dirname(judge_path())}, is a reward model trained on the half of the preference data that no '
             'stage saw (the proxy/gold split of Gao et al. 2022); the stages learned from the other half, through the '
             f'proxy RM ({os.path.dirname(rm_path())}) or, DPO, from its pairs. Judge RM score: raw, the mean over '
             "prompts ± its standard error. Win vs SFT: the judge scores the answer above SFT's answer to the same "
             'prompt (the same sample index; ties count half). Proxy RM score: raw, of the answers that ended. KL to '
             'SFT: sampled estimate of KL(pi || pi_sft), nats per answer.', '', '## Stages', '', *judge_table(results)]
    if accuracy:
        lines += ['', '## Reward models', '', f'Pairwise accuracy on the held-out pairs of {eval_rankings}, which '
                  'neither RM trained on:', '', *table(['RM', 'accuracy', 'pairs'],
                                                       [(name, fmt(m['acc_label']), m['label_pairs']) for name, m in accuracy.items()])]
    lines += ['', '## Side by side']
    for number, i in enumerate(range(0, min(len(prompts), n_examples * samples), samples), 1):
        lines += ['', f'### {number}. {" ".join(prompts[i].split())}', '']
        for stage, r in results.items():
            text = (' '.join(r['answers'][i].split()) or '(empty)') + ('' if r['ended'][i] else ' ... (unfinished)')
            lines.append(f'- **{stage}** (judge {r["judge"][i]:+.3f}): {text}')
    with open(os.path.join(out_dir, 'report.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')


def main():
    config = configure(globals())
    if n_eval < 1 or samples < 1:
        sys.exit('error: n_eval and samples must be at least 1')
    rank, world_size, dev, autocast = setup(device, dtype, seed)
    sft, sft_ckpt = load_checkpoint(os.path.join(out_dir, 'sft', 'ckpt.pt'), 'python sft.py', dev, scalar_head=False)
    enc = load_tokenizer(sft_ckpt['tokenizer'])
    world = tasks.load_world(sft_ckpt.get('data_dir', 'out/data/world'))
    if world is None and not prompt_file:
        sys.exit('error: the SFT model was not trained on the world, so there is no gold judge: pass --prompt_file '
                 '(held-out prompts) and a judge RM (--judge_model), as run.sh does with DATA=real')
    held_out_pairs = read_jsonl(eval_rankings, is_ranking, '{"prompt": ..., "answers": [best, ..., worst]}')
    rm = load_checkpoint(rm_path(), 'python reward.py', dev, scalar_head=True)[0] if os.path.exists(rm_path()) else None
    judge = None if world else load_checkpoint(  # (the error names the command that trains it)
        judge_path(), "python reward.py --n_prompts=0 --n_eval=0 --rankings=judge_rankings.jsonl (data/hh_rlhf.py's) "
        f'--out_dir={os.path.dirname(judge_path())}', dev, scalar_head=True)[0]
    times_path = Path(out_dir, 'stage_times.json')  # {stage: seconds}
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    prompts = [p for p in (tasks.prompt_set(world, 'eval', n_eval) if world else read_prompts(prompt_file, n_eval))
               for _ in range(samples)]
    results = {}
    for stage in filter(None, stages.split(',')):
        path = os.path.join(out_dir, stage, 'ckpt.pt')
        if not os.path.exists(path):
            continue
        key = cache_key(config, stage, world_size)
        r = read_cache(stage, key)
        if r is not None and rank == 0:
            print(f'{stage}: answered before by the same checkpoints and settings ({out_dir}/report/{stage}.json)')
        if r is None:
            made_by = MADE_BY.get(stage, 'the script that writes it')  # (named in the error if it is unreadable)
            model, ckpt = (sft, sft_ckpt) if stage == 'sft' else load_checkpoint(path, made_by, dev, scalar_head=False)
            torch.manual_seed(seed + rank)  # the same draws for a checkpoint whatever was evaluated before it
            r = evaluate(model, sft, rm, judge, enc, world, prompts, autocast, dev, f'{stage}: answering')
            r.update(train_time=ckpt.get('train_time'),
                     sampled=ckpt.get('answers_sampled', 0 if stage in ('pretrain', 'sft') else None))
            if rank == 0:
                write_cache(stage, key, r)
            del model, ckpt
        r = results[stage] = dict(r, time=times.get(stage, r['train_time']))
        if world:
            r['gold'] = mean_and_stderr(per_prompt(r['summary']['scores']))
            if rank == 0:
                print(f'{stage:8s} gold {r["gold"][0]:.3f} ± {r["gold"][1]:.3f} ('
                      + ', '.join(f'{s} {v:.3f}' for s, v in r['summary']['splits'].items()) + '), '
                      f'RM score {fmt(r["rm"])}, KL to SFT {fmt(r["kl"], 2)}, length {r["length"]:.1f}')
        else:
            r['judged'] = mean_and_stderr(per_prompt(r['judge']))
            if rank == 0:
                print(f'{stage:8s} judge RM score {r["judged"][0]:+.3f} ± {r["judged"][1]:.3f}, proxy RM score '
                      f'{fmt(r["rm"])}, KL to SFT {fmt(r["kl"], 2)}, length {r["length"]:.1f}')
    if world:
        sft_scores = results['sft']['summary']['scores'] if 'sft' in results else None
        for r in results.values():  # the gain over SFT (paired by prompt) and the win rate against SFT by the gold judge
            r['gain'] = None if sft_scores is None else mean_and_stderr(
                [a - b for a, b in zip(per_prompt(r['summary']['scores']), per_prompt(sft_scores))])
            r['win'] = None if sft_scores is None else mean([1.0 if a > b else 0.5 if a == b else 0.0
                                                             for a, b in zip(r['summary']['scores'], sft_scores)])
    else:
        sft_judged = results['sft']['judge'] if 'sft' in results else None
        for r in results.values():  # the win rate against SFT by the judge RM: the same prompt and sample index
            r['win'] = None if sft_judged is None else mean_and_stderr(per_prompt(
                [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(r['judge'], sft_judged)]))
    if rank == 0:
        if world:
            write_report(results, prompts)
        else:
            accuracy = {f'{name} ({os.path.dirname(path)})': rm_evaluate(m, enc, held_out_pairs, autocast, dev)
                        for name, path, m in (('proxy', rm_path(), rm), ('judge', judge_path(), judge))
                        if m is not None and held_out_pairs}
            write_judge_report(results, prompts, accuracy)
        print(f'wrote {os.path.join(out_dir, "report.md")}')
    teardown()


if __name__ == '__main__':
    main()
