"""
Stage 2, the reward model (RM): the policy writes K answers to each prompt, a simulated labeler
ranks them, and the RM (a transformer with a scalar head) learns from every pair of each ranking.
Writes out/reward/ckpt.pt, rankings.jsonl and eval_rankings.jsonl (a prompt a line, answers best
first, K may vary). README: "The reward model", "Bring your own data", "Kill it, run it again".

  python reward.py     # K=8 answers to 1536 world prompts, ranked by the simulated labeler
  python reward.py --policy=out/rlhf --init_from=out/reward --out_dir=out/reward2 \
      --rankings=out/reward/rankings.jsonl     # round 2: rank the PPO policy's answers too
  python reward.py --n_prompts=0 --rankings=out/data/hh_rlhf/rankings.jsonl   # your own only

A ranking whose prompt leaves no room for max_new_tokens in the context is dropped and counted
(model.fitting, the rule of every stage); a longer answer is cut, keeping its <|end|>.
"""
import itertools
import json
import math
import os
import random
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from data import tasks
from data.formats import read_rankings, write_jsonl
from data.prepare import get_batch, load_tokens
from model import (all_gather, answer_rewards, answer_text, configure, epoch_batch, fitting,
                   input_stamps, keep_metrics, load_checkpoint, load_tokenizer, log_row, lr_at,
                   made_by, make_optimizer, rank_and_size, ranking_scores, raw_model, resumable,
                   rm_accuracy, sample_answers, save_checkpoint, save_progress, set_lr, setup,
                   teardown, wrap)

# ----------------------------------------------------------------------------- config
policy = 'out/sft'            # the model whose answers are ranked
init_from = 'out/sft'         # the RM starts here: a policy (a new scalar head) or an earlier RM
out_dir = 'out/reward'
rankings = ''                 # comma-separated ranking files to train on too (earlier ones, yours)
n_prompts = 1536              # the world's 'reward' prompts answered and ranked (0: the files only)
n_eval = 400                  # held-out prompts answered and ranked to evaluate the RM (0: none)
k = 8                         # answers per prompt, 2 to 9: K-choose-2 pairs each
max_new_tokens = 128          # (and the room a ranking's prompt must leave for its answer)
temperature = 1.0             # the policy's sampling temperature
label_temperature = 0.05      # the labeler's noise: 0 ranks by gold exactly (ties at random)
sample_batch = 256            # answers sampled at once per process; rankings saved after each
# optimization
batch_size = 8                # prompts per step per process (each with all its answers)
epochs = 2
lr = 6e-4
min_lr = 6e-5
warmup_iters = 10
weight_decay = 0.1
grad_clip = 1.0
ptx_coef = 0.0                # > 0: + ptx_coef x the next-token loss on pretraining text (README)
ptx_data = ''                 #   its tokens (data/prepare.py's folder; '': the policy's)
log_interval = 10             # a row of metrics.jsonl every this many iterations
ckpt_interval = 100           # a checkpoint every this many iterations: a killed run goes on there
# system
device = 'auto'
dtype = 'auto'
compile = True
seed = 1337
# -----------------------------------------------------------------------------


def rank(golds, rng, label_temperature):
    """The labeler: answer indices best first, a Plackett-Luce draw (each place to one of the rest
    with probability ~ exp(gold / label_temperature)); temperature 0: by gold, ties at random."""
    left, order = list(range(len(golds))), []
    while left:
        top = max(golds[i] for i in left)  # (subtracted from the utilities for numerical safety)
        weights = [math.exp((golds[i] - top) / label_temperature) if label_temperature > 0
                   else float(golds[i] == top) for i in left]
        order.append(left.pop(rng.choices(range(len(left)), weights=weights)[0]))
    return order


def noise_ceiling(golds, label_temperature):
    """A gold-ordering RM's agreement with the labels on each pair: sigmoid(|gold difference| /
    label_temperature) (Plackett-Luce pairs are Bradley-Terry); a tie in gold: 0.5."""
    differences = [abs(a - b) for a, b in itertools.combinations(golds, 2)]
    if not label_temperature:  # (the labeler orders by gold)
        return [0.5 if d == 0 else 1.0 for d in differences]
    return [1 / (1 + math.exp(-d / label_temperature)) for d in differences]


def ranking_loss(rewards, sizes):
    """InstructGPT's RM loss (Ouyang et al. 2022, eq. 1): the mean over prompts of the mean over
    their K-choose-2 pairs of -log sigmoid(r_better - r_worse); rewards: best first, K = sizes."""
    losses = []
    for r in rewards.split(sizes):
        better, worse = torch.triu_indices(len(r), len(r), offset=1, device=r.device)  # all i < j
        losses.append(-F.logsigmoid(r[better] - r[worse]).mean())
    return torch.stack(losses).mean()


def rm_metrics(rm, enc, rows, autocast, device, label_temperature, world=None, scores=None):
    """model.rm_accuracy, the ceiling (the mean noise_ceiling), the number of prompts, and given
    the world: the same for each split of generalisation and for harmful requests with a new verb
    (from the rows' scores: each answer scored once), and for each cell of the probe
    (data/tasks.py probe_rankings: its own rows, not these). scores: the rows' ranking_scores,
    if computed before (a part of rows: scored once), else the RM scores them."""
    if not rows:
        return {}
    scores = ranking_scores(rm, enc, rows, autocast, device) if scores is None else scores
    ceiling = [p for row in rows for p in noise_ceiling(row['gold'], label_temperature)]
    accuracy = dict(rm_accuracy(rows, scores),
                    ceiling=sum(ceiling) / max(len(ceiling), 1))
    metrics = {key: accuracy[key] for key in ('acc_label', 'acc_gold', 'ceiling', 'corr_gold',
                                              'rm_mean', 'rm_std', 'gold_pairs', 'label_pairs')}
    metrics['prompts'] = len(rows)
    if world:  # (a: the phrasings of training, as PPO's prompts are)
        parts = {s: [i for i, row in enumerate(rows) if tasks.generalisation(row['prompt']) == s]
                 for s in tasks.GENERALISATION}
        parts['harmful, new verb'] = [i for i, row in enumerate(rows)
                                      if new_verb_harm(row['prompt'])]
        metrics['splits'] = {s: rm_metrics(rm, enc, [rows[i] for i in part], autocast, device,
                                           label_temperature, scores=[scores[i] for i in part])
                             for s, part in parts.items() if part}
        metrics['splits'].update({cell: rm_metrics(rm, enc, part, autocast, device,
                                                   label_temperature)
                                  for cell, part in tasks.probe_rankings(world).items() if part})
    return metrics


def new_verb_harm(prompt):
    """A harmful request whose verb no training prompt uses (split c or d): the RM's weak spot."""
    kind, _, _, form = tasks.parse_form(prompt)
    return kind == 'harmful' and form.get('verb') in tasks.NEW_WORDS


def kept_rows(partial, stamp, n_prompts):
    """The rankings a killed run of the same command (same stamp, line 1) left in partial."""
    rows = []
    if os.path.exists(partial):
        with open(partial, encoding='utf-8') as f:  # (a line a kill cut short has no newline)
            rows = [json.loads(line) for line in f if line.endswith('\n')]
        if rows[:1] != [stamp]:
            print(f'{partial}: from a run with other settings or another policy: sampling over')
            rows = []
        elif rows[1:]:
            print(f'{partial}: {len(rows) - 1} of {n_prompts} prompts ranked before, kept')
    write_jsonl(partial, [stamp] + rows[1:])
    return rows[1:]


def sample_and_rank(model, enc, world, split, n, path, stamp, autocast, k, sample_batch,
                    max_new_tokens, temperature, seed, label_temperature):
    """K answers to the split's first n prompts, ranked: rows {prompt, answers (best first, no
    empty one), gold}, to path (2 answers or more) and chunk by chunk to path.partial (resumed)."""
    process_rank, world_size = rank_and_size()
    prompts, partial = tasks.prompt_set(world, split, n) if n else [], path + '.partial'
    rows = all_gather(kept_rows(partial, stamp, len(prompts)) if process_rank == 0 else [])
    chunk = max(1, sample_batch // k) * world_size
    bar = tqdm(total=len(prompts), initial=len(rows), desc=f'answering {split} prompts x{k}',
               disable=process_rank != 0 or not prompts, dynamic_ncols=True)
    for start in range(len(rows), len(prompts), chunk):
        # the chunk's own seed: a resumed run samples and ranks it as the killed run would have
        rng = random.Random(f'{seed}-{split}-{start}-{process_rank}')
        torch.manual_seed(rng.getrandbits(63))
        mine = prompts[start:start + chunk][process_rank::world_size]
        with autocast:
            tokens = sample_answers(model, enc, [p for p in mine for _ in range(k)],
                                    max_new_tokens, temperature)
        ranked = []
        for i, prompt in enumerate(mine):
            answers = [answer_text(enc, t) for t in tokens[i * k:(i + 1) * k]]
            golds = [tasks.score(world, prompt, a)[0] for a in answers]
            best = [j for j in rank(golds, rng, label_temperature) if answers[j].strip()]
            ranked.append((i * world_size + process_rank, dict(  # (the prompt's place in the chunk)
                prompt=prompt, answers=[answers[j] for j in best], gold=[golds[j] for j in best])))
        ranked = [row for _, row in sorted(all_gather(ranked), key=lambda pair: pair[0])]
        rows += ranked
        if process_rank == 0:
            with open(partial, 'a', encoding='utf-8') as f:
                f.writelines(json.dumps(row) + '\n' for row in ranked)
        bar.update(len(ranked))
    bar.close()
    rows = [row for row in rows if len(row['answers']) >= 2]
    if process_rank == 0:
        write_jsonl(path, rows)
    return rows


def train_step(scorer, optimizer, enc, batch, step_lr, grad_clip, autocast, device, text=None,
               ptx_coef=0.0, text_seed=0):
    """One AdamW step on a batch of (prompt, answers best first): the ranking loss, plus ptx_coef x
    the language model's loss on one window of text (pretraining tokens) per prompt of the batch,
    drawn by text_seed: InstructGPT's term on PPO (eq. 2), here on the RM; clipped. Returns both."""
    set_lr(optimizer, step_lr)
    plain = raw_model(scorer)  # (the text's pass: one backward for both, so DDP averages it once)
    with autocast:
        r = answer_rewards(scorer, enc, [(p, a) for p, answers in batch for a in answers], device)
        lm = torch.zeros((), device=device) if text is None else plain(*get_batch(
            text, len(batch), plain.config.block_size, text_seed, device))[1]
    loss = ranking_loss(r.float(), [len(answers) for _, answers in batch])
    (loss + ptx_coef * lm).backward()
    torch.nn.utils.clip_grad_norm_(scorer.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, lm


def check_inputs(world, n_prompts, n_eval, extra, ptx_coef, text_dir):
    """A one-line error for what would stop the run later: prompts to rank and no world (so no
    labeler), nothing to train on, or the text term and no pretraining text in text_dir."""
    if world is None and (n_prompts or n_eval):
        sys.exit('error: the policy was not trained on the world, so no labeler can rank its '
                 'answers: pass --n_prompts=0 --n_eval=0 and --rankings=your_rankings.jsonl')
    if not n_prompts and not extra:
        sys.exit('error: nothing to train on: set --n_prompts or --rankings')
    if ptx_coef and not os.path.exists(os.path.join(text_dir, 'train.bin')):
        sys.exit(f'error: --ptx_coef={ptx_coef} trains on pretraining text too, and {text_dir} has '
                 'no train.bin: pass --ptx_data=a folder data/prepare.py wrote, or --ptx_coef=0')


def trained_on(rows, n_prompts, n_extra, rankings, seconds):
    """The line printed before training: what the RM trains on."""
    best_first = sum(row['gold'][0] == max(row['gold']) for row in rows) / max(len(rows), 1)
    sampled = n_prompts and (f'{len(rows)} prompts ranked ({best_first:.0%} with a '
                             f'best-gold answer first) in {seconds:.0f} s')
    return ' + '.join(filter(None, (sampled, n_extra and f'{n_extra} rankings from {rankings}')))


def summary(after, before, n_eval, k):
    """The line printed at the end: held-out accuracy vs gold and vs the labels, and by split."""
    splits = [f'{tasks.GENERALISATION.get(s, s)} {m["acc_gold"]:.1%}'
              for s, m in after['splits'].items()]
    started = f'; {before["acc_gold"]:.1%} before training' if before else ''
    return (f'held-out prompts ({n_eval} x {k} answers): pairwise accuracy vs the gold order '
            f'{after["acc_gold"]:.1%} (over {after["gold_pairs"]} pairs whose gold differs'
            f'{started}), vs the noisy labels {after["acc_label"]:.1%} (ceiling '
            f'{after["ceiling"]:.1%}), correlation with gold {after["corr_gold"]:.2f}; vs gold by '
            'split: ' + ', '.join(splits))


def main():
    config = configure(globals())
    process_rank, world_size, device, autocast = setup(config['device'], dtype, seed)
    if not 2 <= k <= 9:
        sys.exit(f'error: k must be between 2 and 9, not {k}')
    extra = read_rankings(rankings)  # (checked first: a malformed line stops it at once)
    policy_path, init_path = os.path.join(policy, 'ckpt.pt'), os.path.join(init_from, 'ckpt.pt')
    model, ckpt = load_checkpoint(policy_path, f'python {os.path.basename(policy)}.py', device)
    enc, data_dir = load_tokenizer(ckpt['tokenizer']), ckpt.get('data_dir', 'out/data/world')
    extra = fitting(enc, extra, model.config.block_size, max_new_tokens, rankings)  # (they fit)
    world = tasks.load_world(data_dir)
    text_dir = ptx_data or data_dir  # (the text term's; checked before the minutes of sampling)
    check_inputs(world, n_prompts, n_eval, extra, ptx_coef, text_dir)
    os.makedirs(out_dir, exist_ok=True)
    # the policy answers each prompt K times and the labeler ranks: to train on, and held out
    t0, stamp = time.time(), dict(config=config, inputs=input_stamps([policy_path]))
    sampling = dict(k=k, sample_batch=sample_batch, max_new_tokens=max_new_tokens, seed=seed,
                    temperature=temperature, label_temperature=label_temperature)
    train_rows = sample_and_rank(model.eval(), enc, world, 'reward', n_prompts, os.path.join(
        out_dir, 'rankings.jsonl'), stamp, autocast, **sampling)  # (the new rankings only)
    eval_rows = sample_and_rank(model, enc, world, 'eval', n_eval, os.path.join(
        out_dir, 'eval_rankings.jsonl'), stamp, autocast, **sampling)  # never trained on
    del model
    if process_rank == 0:
        print(trained_on(train_rows, n_prompts, len(extra), rankings, time.time() - t0))
    data = [(row['prompt'], row['answers']) for row in train_rows + extra]
    lengths = [len(str(p)) + max(map(len, answers)) for p, answers in data]  # (characters)
    iters = int(epochs * max(1, len(data) // batch_size)) // world_size
    # the reward model: the policy's transformer with a scalar head (or an earlier RM)
    rm, init = load_checkpoint(init_path, made_by(init_path), device, scalar_head=True)
    inputs = [policy_path, init_path] + [path for path in rankings.split(',') if path]
    resumed = resumable(out_dir, config, inputs, device)  # a killed run: go on from its checkpoint
    optimizer = make_optimizer(rm, lr, weight_decay, device)
    if resumed:
        rm.load_state_dict(resumed['model'])
        optimizer.load_state_dict(resumed['optimizer'])
        start, before = resumed['iter_num'], resumed['before']
        t0 = time.time() - resumed['train_time']  # (the time of the killed run counts)
    else:  # (a head new on a policy scores every answer 0: accuracy 0.5, nothing to measure)
        scored = eval_rows if init['model_args'].get('scalar_head') else []
        start, before = 0, rm_metrics(rm, enc, scored, autocast, device, label_temperature)
    ckpt_path, metrics_path = (os.path.join(out_dir, name) for name in ('ckpt.pt', 'metrics.jsonl'))
    if process_rank == 0:
        keep_metrics(metrics_path, start)
        if resumed:
            print(f'resuming at iteration {start} of {iters}')
        elif before:
            log_row(metrics_path, dict(iter=0, when='before', **before))
    about = dict(config=config, tokenizer=ckpt['tokenizer'], stage='reward', data_dir=data_dir)
    text = load_tokens(text_dir, 'train', rm.config.block_size)[0] if ptx_coef else None
    scorer = wrap(rm.train(), device, compile)
    bar = tqdm(range(start, iters), initial=start, total=iters, desc='reward model',
               disable=process_rank != 0, dynamic_ncols=True)
    for it in bar:
        # this step's batch (prompts of similar length, each with all its answers) and lr
        batch = [data[i] for i in epoch_batch(it, lengths, batch_size, seed)]
        step_lr = lr_at(it, lr, min_lr, warmup_iters, iters)
        # at that lr: the ranking loss of all pairs and the text's (its own draw a step), a step
        loss, lm = train_step(scorer, optimizer, enc, batch, step_lr, grad_clip, autocast, device,
                              text, ptx_coef, seed * 10**6 + it * world_size + process_rank)
        # log, and a checkpoint that a killed run goes on from
        if process_rank == 0 and it % log_interval == 0:
            shown = dict(loss=loss.item(), **({'ptx_loss': lm.item()} if ptx_coef else {}))
            bar.set_postfix({key: f'{value:.3f}' for key, value in shown.items()})
            log_row(metrics_path, dict(iter=it, **shown, lr=step_lr))
        if ckpt_interval and (it + 1) % ckpt_interval == 0 and it + 1 < iters:
            save_progress(ckpt_path, rm, inputs, **about, iter_num=it + 1, before=before,
                          optimizer=optimizer.state_dict(), train_time=time.time() - t0)
    # held out: all prompts, each split of generalisation and the probe; the finished checkpoint
    after = rm_metrics(rm.eval(), enc, eval_rows, autocast, device, label_temperature, world)
    if process_rank == 0:
        save_checkpoint(ckpt_path, rm, **about, iter_num=iters, metrics=after,
                        train_time=time.time() - t0)
        for name in ('rankings.jsonl', 'eval_rankings.jsonl'):  # (a resumed run trains on them)
            os.remove(os.path.join(out_dir, name + '.partial'))
        if after:
            log_row(metrics_path, dict(iter=iters, when='after', **after))
            print(summary(after, before, len(eval_rows), k))
        print(f'checkpoint {ckpt_path} ({time.time() - t0:.0f} s)')
    teardown()


if __name__ == '__main__':
    main()
