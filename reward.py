"""
Stage 2, the reward model (RM). For each prompt the policy (the SFT model) writes K answers, a
labeler ranks them, and the RM, a transformer with a scalar head on the answer's last token,
learns from every pair of each ranking. Reads out/sft, writes out/reward/ckpt.pt and the rankings
it trained on (out/reward/rankings.jsonl).

  python reward.py                                  # K=8 answers to 1536 world prompts, ranked by the simulated labeler
  python reward.py --policy=out/rlhf --init_from=out/reward --rankings=out/reward/rankings.jsonl --out_dir=out/reward2
                                                    # round 2: rank the PPO policy's answers, add the old rankings
  python reward.py --n_prompts=0 --rankings=out/data/hh_rlhf/rankings.jsonl   # your own rankings only

The labeler is the world's gold judge (data/tasks.py) with noise: it ranks K answers by a
Plackett-Luce draw with utilities gold / label_temperature, so a pair whose gold scores differ by
d comes out in the gold order with probability sigmoid(d / label_temperature) (Bradley-Terry);
ties are broken at random. No RM can agree with noisy labels more than that: the ceiling printed
beside the accuracy.

Rankings are JSONL, one prompt per line, its answers ordered best to worst (K may vary):
  {"prompt": "..." or [{"role": "user", "content": "..."}, ...], "answers": ["best", ..., "worst"]}

Run it again after a kill (the same command): it goes on. The rankings go to rankings.jsonl.partial
(and eval_rankings.jsonl.partial) a chunk of prompts at a time, and a new run keeps them and samples
the rest; rankings.jsonl appears only when all are done. The RM saves a checkpoint every
ckpt_interval iterations and goes on from the last one with the batches it would have had. Each
chunk of prompts draws from its own seed, so on a CPU the end is the same as a run never killed.
"""
import json
import math
import os
import random
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from data import tasks
from model import (all_gather, answer_text, configure, input_stamps, keep_metrics, load_checkpoint, load_tokenizer,
                   lr_at, make_optimizer, prompt_tokens, raw_model, read_jsonl, resumable, sample_answers,
                   save_checkpoint, save_progress, setup, teardown, write_jsonl)
from sft import batches

# ----------------------------------------------------------------------------- config
policy = 'out/sft'            # the model whose answers are ranked
init_from = 'out/sft'         # the RM starts here: a policy (a new scalar head) or an earlier RM
out_dir = 'out/reward'
rankings = ''                 # comma-separated ranking JSONL files to train on as well (earlier rounds, your own)
n_prompts = 1536              # the world's 'reward' prompts answered and ranked (0: the files above only)
n_eval = 400                  # held-out prompts answered and ranked to evaluate the RM (0: none)
k = 8                         # answers per prompt, 2 to 9: K-choose-2 pairs each
max_new_tokens = 128
temperature = 1.0             # the policy's sampling temperature
label_temperature = 0.05      # the labeler's noise: 0 ranks by the gold score exactly (ties at random)
sample_batch = 256            # answers sampled at once per process: the rankings are saved after each such chunk
# optimization
batch_size = 8                # prompts per step per process (each with all its answers)
epochs = 2
lr = 6e-4
min_lr = 6e-5
warmup_iters = 10
weight_decay = 0.1
grad_clip = 1.0
log_interval = 10             # a row of metrics.jsonl every this many iterations
ckpt_interval = 100           # a checkpoint every this many iterations: a killed run, started again, goes on from it
# system
device = 'auto'
dtype = 'auto'
compile = True
seed = 1337
# -----------------------------------------------------------------------------


def rank(golds, rng, label_temperature):
    """The labeler: indices of the answers best first, drawn from the Plackett-Luce model with
    utilities gold / label_temperature (each place goes to one of the rest with probability
    proportional to exp(utility)); with temperature 0, by gold with ties broken at random."""
    left, order = list(range(len(golds))), []
    while left:
        if label_temperature > 0:
            top = max(golds[i] for i in left)  # (subtracted for numerical safety)
            weights = [math.exp((golds[i] - top) / label_temperature) for i in left]
        else:
            weights = [float(golds[i] == max(golds[j] for j in left)) for i in left]
        order.append(left.pop(rng.choices(range(len(left)), weights=weights)[0]))
    return order


def noise_ceiling(golds, label_temperature):
    """The agreement with the noisy labels that a perfect RM (one that orders by gold) can expect,
    over all pairs of one prompt: max(p, 1-p) with p = sigmoid(difference / label_temperature),
    the chance that the labeler puts the pair in gold order (Plackett-Luce pairs are Bradley-Terry)."""
    ceiling = []
    for i in range(len(golds)):
        for j in range(i + 1, len(golds)):
            d = abs(golds[i] - golds[j])
            ceiling.append(0.5 if d == 0 else 1.0 if label_temperature == 0 else 1 / (1 + math.exp(-d / label_temperature)))
    return ceiling


def ranking_loss(rewards, sizes):
    """InstructGPT's RM loss (Ouyang et al. 2022, eq. 1): for each prompt, the mean over its
    K-choose-2 pairs of -log sigmoid(r_better - r_worse); then the mean over prompts. rewards:
    one per answer, prompt after prompt, each prompt's answers best first; sizes: the K of each."""
    losses = []
    for r in rewards.split(sizes):
        better, worse = torch.triu_indices(len(r), len(r), offset=1, device=r.device)  # all i < j
        losses.append(-F.logsigmoid(r[better] - r[worse]).mean())
    return torch.stack(losses).mean()


def is_ranking(row):
    """'' for a well-formed ranking, else what is wrong with it."""
    prompt, answers = row['prompt'], row['answers']
    if not (isinstance(prompt, str) and prompt.strip()) and not (isinstance(prompt, list) and prompt and all(
            isinstance(m, dict) and m.get('role') in ('user', 'assistant') and isinstance(m.get('content'), str)
            for m in prompt)):
        return '"prompt" must be text or a list of messages'
    if not isinstance(answers, list) or len(answers) < 2 or not all(isinstance(a, str) for a in answers):
        return '"answers" must be a list of at least 2 texts'
    return '' if all(a.strip() for a in answers) else 'an answer is empty'


def answer_rewards(rm, enc, pairs, device):
    """The RM's score of each (prompt, answer): the scalar head at the answer's last token, its
    <|end|> (appended; an answer too long for the model is cut, keeping the <|end|>)."""
    end, block_size = enc.encode_single_token('<|end|>'), raw_model(rm).config.block_size
    seqs = [(prompt_tokens(enc, p) + enc.encode_ordinary(a))[:block_size - 1] + [end] for p, a in pairs]
    longest = max(len(s) for s in seqs)
    idx = torch.tensor([s + [0] * (longest - len(s)) for s in seqs], device=device)  # right padding: unseen by causal attention
    last = torch.tensor([len(s) - 1 for s in seqs], device=device)
    return rm(idx)[0].gather(1, last[:, None]).squeeze(1)


@torch.no_grad()
def score_pairs(rm, enc, pairs, autocast, device):
    """answer_rewards of any number of (prompt, answer) pairs, 64 at a time: a list of floats."""
    scores = []
    for i in range(0, len(pairs), 64):
        with autocast:
            scores += answer_rewards(rm, enc, pairs[i:i + 64], device).float().tolist()
    return scores


def kept_rows(partial, stamp):
    """The rankings that a killed run of the same command (the same stamp, the file's first line)
    wrote to partial; [] if there are none. A line cut short by the kill has no newline: dropped."""
    if not os.path.exists(partial):
        return []
    with open(partial) as f:
        lines = [line for line in f if line.endswith('\n')]
    if not lines or json.loads(lines[0]) != stamp:
        print(f'{partial}: from a run with other settings or another policy: sampling over')
        return []
    return [json.loads(line) for line in lines[1:]]


def sample_and_rank(model, enc, world, split, n, path, stamp, autocast):
    """K answers to each of the split's first n prompts, ranked by the noisy labeler: a list of dicts
    {prompt, answers (best first), gold (their gold scores)}, the same on every rank, also written to
    path. A chunk of prompts at a time (each rank a share), the rows are appended to path.partial
    after its stamp; a run of the same command keeps them and goes on with the prompts after them.
    An empty answer (the policy ended at once) is left out of its ranking, as the ranking format has
    no empty answers, and a prompt left with fewer than 2 answers is left out of path."""
    rank_, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    prompts, partial = tasks.prompt_set(world, split, n) if n else [], path + '.partial'
    rows = all_gather(kept_rows(partial, stamp) if rank_ == 0 else [])  # (every rank: what the master read)
    if rank_ == 0:
        if rows:
            print(f'{partial}: {len(rows)} of {len(prompts)} prompts ranked before, kept')
        with open(partial, 'w') as f:  # (written again without the line a kill cut short)
            f.writelines(json.dumps(row) + '\n' for row in [stamp] + rows)
    chunk = max(1, sample_batch // k) * world_size
    bar = tqdm(total=len(prompts), initial=len(rows), desc=f'answering {split} prompts x{k}', disable=rank_ != 0 or not prompts,
               dynamic_ncols=True)
    for start in range(len(rows), len(prompts), chunk):
        # the chunk's own seed: a resumed run samples and ranks it as the killed run would have
        rng = random.Random(f'{seed}-{split}-{start}-{rank_}')
        torch.manual_seed(rng.getrandbits(63))
        mine = prompts[start:start + chunk][rank_::world_size]
        with autocast:
            tokens = sample_answers(model, enc, [p for p in mine for _ in range(k)], max_new_tokens, temperature)
        ranked = []
        for i, prompt in enumerate(mine):
            answers = [answer_text(enc, t) for t in tokens[i * k:(i + 1) * k]]
            golds = [tasks.score(world, prompt, a)[0] for a in answers]
            order = [j for j in rank(golds, rng, label_temperature) if answers[j].strip()]  # (empty answers left out)
            ranked.append((i * world_size + rank_, dict(prompt=prompt, answers=[answers[j] for j in order],
                                                        gold=[golds[j] for j in order])))
        ranked = [row for _, row in sorted(all_gather(ranked), key=lambda pair: pair[0])]  # (in prompt order)
        rows += ranked
        if rank_ == 0:
            with open(partial, 'a') as f:
                f.writelines(json.dumps(row) + '\n' for row in ranked)
        bar.update(len(ranked))
    bar.close()
    rows = [row for row in rows if len(row['answers']) >= 2]
    if rank_ == 0:
        write_jsonl(path, rows)
    return rows


@torch.no_grad()
def evaluate(rm, enc, rows, autocast, device):
    """Pairwise accuracy against the labels and against the gold order (pairs whose gold differs),
    the label-noise ceiling, and the correlation of RM score with gold score."""
    if not rows:
        return {}
    agree_label, agree_gold, ceiling, rewards, golds = [], [], [], [], []
    for i in range(0, len(rows), 16):
        batch = rows[i:i + 16]
        with autocast:
            r = answer_rewards(rm, enc, [(row['prompt'], a) for row in batch for a in row['answers']], device)
        for row, rs in zip(batch, r.float().split([len(row['answers']) for row in batch])):
            rs, g = rs.tolist(), row.get('gold', [0.0] * len(rs))  # (rankings of real data have no gold: no gold pairs)
            for a in range(len(rs)):
                for b in range(a + 1, len(rs)):  # a is ranked above b
                    agree_label.append(1.0 if rs[a] > rs[b] else 0.5 if rs[a] == rs[b] else 0.0)
                    if g[a] != g[b]:  # (a tie of the RM counts half)
                        agree_gold.append(0.5 if rs[a] == rs[b] else float((rs[a] > rs[b]) == (g[a] > g[b])))
            ceiling += noise_ceiling(g, label_temperature)
            rewards += rs
            golds += g
    mean = lambda x: sum(x) / max(len(x), 1)
    mr, mg = mean(rewards), mean(golds)
    cov = sum((r - mr) * (g - mg) for r, g in zip(rewards, golds))
    norm = math.sqrt(sum((r - mr) ** 2 for r in rewards) * sum((g - mg) ** 2 for g in golds)) or 1.0
    return dict(acc_label=mean(agree_label), acc_gold=mean(agree_gold), ceiling=mean(ceiling),
                corr_gold=cov / norm, rm_mean=mr, rm_std=math.sqrt(mean([(r - mr) ** 2 for r in rewards])),
                gold_pairs=len(agree_gold), label_pairs=len(agree_label))


def main():
    config = configure(globals())
    rank_, world_size, dev, autocast = setup(device, dtype, seed)
    master = rank_ == 0
    if not 2 <= k <= 9:
        sys.exit(f'error: k must be between 2 and 9, not {k}')
    extra = [(row['prompt'], row['answers'])  # (checked before any sampling or writing)
             for row in read_jsonl(rankings, is_ranking, '{"prompt": ..., "answers": [best, ..., worst]}')]
    model, ckpt = load_checkpoint(os.path.join(policy, 'ckpt.pt'), f'python {os.path.basename(policy)}.py', dev)
    enc = load_tokenizer(ckpt['tokenizer'])
    world = tasks.load_world(ckpt.get('data_dir', 'out/data/world'))
    if world is None and (n_prompts or n_eval):
        sys.exit('error: the policy was not trained on the world, so no labeler can rank its answers: '
                 'pass --n_prompts=0 --n_eval=0 and --rankings=your_rankings.jsonl')
    if not n_prompts and not extra:
        sys.exit('error: nothing to train on: set --n_prompts or --rankings')
    if master:
        os.makedirs(out_dir, exist_ok=True)
    t0, policy_path = time.time(), os.path.join(policy, 'ckpt.pt')
    stamp = dict(config=config, inputs=input_stamps([policy_path]))  # what the sampled rankings depend on
    model.eval()
    train_rows = sample_and_rank(model, enc, world, 'reward', n_prompts, os.path.join(out_dir, 'rankings.jsonl'),
                                 stamp, autocast)  # (the new rankings only)
    eval_rows = sample_and_rank(model, enc, world, 'eval', n_eval, os.path.join(out_dir, 'eval_rankings.jsonl'),
                                stamp, autocast)  # held out: never trained on
    del model
    if master:
        gold_first = sum(row['gold'][0] == max(row['gold']) for row in train_rows) / max(len(train_rows), 1)
        sampled = (f'{len(train_rows)} prompts ranked ({gold_first:.0%} with a best-gold answer first) in '
                   f'{time.time() - t0:.0f} s' if n_prompts else '')
        print(' + '.join(filter(None, (sampled, extra and f'{len(extra)} rankings from {rankings}'))))
    data = [(row['prompt'], row['answers']) for row in train_rows] + extra

    # the reward model: the policy's transformer with a scalar head (or an earlier RM)
    rm, _ = load_checkpoint(os.path.join(init_from, 'ckpt.pt'), f'python {os.path.basename(init_from)}.py', dev,
                            scalar_head=True)
    inputs = [policy_path, os.path.join(init_from, 'ckpt.pt')] + [path for path in rankings.split(',') if path]
    resumed = resumable(out_dir, config, inputs, dev)  # a killed run of this command: go on from its checkpoint
    if resumed:
        rm.load_state_dict(resumed['model'])
    rm.train()
    optimizer = make_optimizer(rm, lr, weight_decay, dev)
    if resumed:
        optimizer.load_state_dict(resumed['optimizer'])
    scorer = torch.compile(rm) if compile and dev.startswith('cuda') else rm
    if dist.is_initialized():
        scorer = DDP(scorer, device_ids=[torch.device(dev).index] if dev.startswith('cuda') else None)
    # held out: all prompts, and each split of generalisation (a: the phrasings of training, as PPO's prompts are)
    splits = {s: [row for row in eval_rows if tasks.generalisation(row['prompt']) == s] for s in tasks.GENERALISATION}
    start = resumed['iter_num'] if resumed else 0
    ckpt_path, metrics_path = os.path.join(out_dir, 'ckpt.pt'), os.path.join(out_dir, 'metrics.jsonl')
    if resumed:
        before, t0 = resumed['before'], time.time() - resumed['train_time']
    else:
        before = evaluate(rm, enc, eval_rows, autocast, dev) if eval_rows else {}

    def log(**row):
        with open(metrics_path, 'a') as f:
            f.write(json.dumps(row) + '\n')

    if master:
        keep_metrics(metrics_path, start)
        if before and not resumed:
            log(iter=0, when='before', **before)
    lengths = [len(str(prompt)) + max(map(len, answers)) for prompt, answers in data]  # (in characters: close enough)
    n_batches, epoch_batches = max(1, len(data) // batch_size), {}
    iters = int(epochs * n_batches) // world_size
    meta = dict(config=config, tokenizer=ckpt['tokenizer'], stage='reward',
                data_dir=ckpt.get('data_dir', 'out/data/world'))
    if master and resumed:
        print(f'resuming at iteration {start} of {iters}')
    bar = tqdm(range(start, iters), initial=start, total=iters, desc='reward model', disable=not master,
               dynamic_ncols=True)
    for it in bar:
        number = it * world_size + rank_  # this rank's batch, counted over all ranks
        epoch = number // n_batches
        if epoch not in epoch_batches:  # a new epoch: a new order, prompts of similar length together
            epoch_batches = {epoch: batches(lengths, batch_size, seed + epoch)}
        batch = [data[i] for i in epoch_batches[epoch][number % n_batches]]
        step_lr = lr_at(it, lr, min_lr, warmup_iters, iters)
        for group in optimizer.param_groups:
            group['lr'] = step_lr
        with autocast:
            r = answer_rewards(scorer, enc, [(p, a) for p, answers in batch for a in answers], dev)
        loss = ranking_loss(r.float(), [len(answers) for _, answers in batch])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(rm.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if master and it % log_interval == 0:
            bar.set_postfix(loss=f'{loss.item():.3f}')
            log(iter=it, loss=loss.item(), lr=step_lr)
        if ckpt_interval and (it + 1) % ckpt_interval == 0 and it + 1 < iters:
            save_progress(ckpt_path, rm, inputs, **meta, iter_num=it + 1, optimizer=optimizer.state_dict(),
                          before=before, train_time=time.time() - t0)
    bar.close()
    rm.eval()
    after = dict(evaluate(rm, enc, eval_rows, autocast, dev), splits={
        s: evaluate(rm, enc, rows, autocast, dev) for s, rows in splits.items() if rows}) if eval_rows else {}
    if master:
        save_checkpoint(ckpt_path, rm, **meta, iter_num=iters, metrics=after, train_time=time.time() - t0)
        for name in ('rankings.jsonl', 'eval_rankings.jsonl'):  # (kept until now: a resumed run trains on them)
            os.remove(os.path.join(out_dir, name + '.partial'))
        if after:
            log(iter=iters, when='after', **after)
            print(f'held-out prompts ({len(eval_rows)} x {k} answers): pairwise accuracy vs the gold order '
                  f'{after["acc_gold"]:.1%} (over {after["gold_pairs"]} pairs whose gold differs; '
                  f'{before["acc_gold"]:.1%} before training), vs the noisy labels {after["acc_label"]:.1%} '
                  f'(ceiling {after["ceiling"]:.1%}), correlation with gold {after["corr_gold"]:.2f}; vs gold by split: '
                  + ', '.join(f'{tasks.GENERALISATION[s]} {m["acc_gold"]:.1%}' for s, m in after['splits'].items()))
        print(f'checkpoint {ckpt_path} ({time.time() - t0:.0f} s)')
    teardown()


if __name__ == '__main__':
    main()
