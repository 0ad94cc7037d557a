"""
Direct preference optimisation (DPO; Rafailov et al. 2023): the policy learns from the ranked answers
the reward model learned from (out/reward/rankings.jsonl, every pair of each prompt's K answers),
with no reward model and no sampling. The loss raises the chosen answer's log-probability relative
to the rejected one's, each measured against the frozen SFT model, so DPO and RM + PPO see identical
labels. Reads out/sft and out/reward's rankings, writes out/dpo/ckpt.pt.

  python dpo.py                     # DPO
  python dpo.py --beta=0.3          # a stronger pull toward SFT (exercise: sweep it, watch KL and gold)
  python dpo.py --loss=ipo          # IPO (Azar et al. 2023): the margin regressed to 1/(2 beta)

Killed (kill -9, a lost machine), the same command run again goes on from its last checkpoint (every
ckpt_interval steps and before the final evaluation) and ends as the run would have without the kill.

beta * (log pi(y|x) - log pi_ref(y|x)) is DPO's implicit reward of an answer (section 5 of the
paper). Held out (out/reward/eval_rankings.jsonl, the RM's held-out rankings) it is measured as the
RM is: the share of pairs it orders as the labels do, and as the gold judge does. Over training the
log also follows the chosen and rejected answers' log-probabilities: both usually fall, the
rejected faster. At the end the policy answers the world's held-out prompts: the gold judge scores
them (as sft.py does), and log pi - log pi_ref of those answers estimates its KL to SFT.

On real data (run.sh with DATA=real) the rankings are data/hh_rlhf.py's proxy half and its held-out pairs,
which carry no gold scores: the log has the accuracy against the labels only, and report.py's judge RM
measures the policy.

  python dpo.py --init_from=out/real/sft --ref_from=out/real/sft --out_dir=out/real/dpo \
      --rankings=out/real/data/hh_rlhf/rankings.jsonl --eval_rankings=out/real/data/hh_rlhf/eval_rankings.jsonl
"""
import json
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from data import tasks
from model import (all_gather, all_mean, answer_text, configure, keep_metrics, load_checkpoint, load_tokenizer, lr_at,
                   make_optimizer, read_jsonl, resumable, sample_answers, save_checkpoint, save_progress, setup, teardown)
from reward import is_ranking
from sft import batches, collate, tokenize

# ----------------------------------------------------------------------------- config
init_from = 'out/sft'         # the policy starts here
ref_from = 'out/sft'          # the frozen reference
rankings = 'out/reward/rankings.jsonl'            # comma-separated ranking JSONL files (reward.py's format)
eval_rankings = 'out/reward/eval_rankings.jsonl'  # held-out rankings for the implicit-reward accuracy ('': none)
out_dir = 'out/dpo'
loss = 'dpo'                  # 'dpo' (Rafailov et al. 2023) or 'ipo' (Azar et al. 2023)
beta = 0.1                    # DPO's beta (IPO's tau): the weight of the pull toward the reference
n_eval = 400                  # held-out world prompts answered and judged at the end (0: none)
max_new_tokens = 128
temperature = 1.0
# optimization
batch_size = 8                # prompts per step per process, each with all its answers
epochs = 0.5                  # passes over the rankings (0.5: half the prompts, each with all its pairs)
lr = 2e-4
min_lr = 2e-5
warmup_iters = 10
weight_decay = 0.0
grad_clip = 1.0
eval_interval = 32            # held-out implicit-reward accuracy and gold score every this many steps
ckpt_interval = 16            # a checkpoint every this many steps: a killed run, started again, goes on from it
# system
device = 'auto'
dtype = 'auto'
seed = 1337
# -----------------------------------------------------------------------------


def dpo_loss(h, beta):
    """DPO's loss of each pair (Rafailov et al. 2023, eq. 7): -log sigmoid(beta h), where h =
    (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x)): the chosen answer's
    log-ratio minus the rejected one's. At the start (pi = pi_ref) h = 0: a loss of log 2."""
    return -F.logsigmoid(beta * h)


def ipo_loss(h, beta):
    """IPO's loss of each pair (Azar et al. 2023): (h - 1/(2 tau))^2 with tau = beta: the margin is
    pulled to a finite target, where DPO's loss keeps pushing it up."""
    return (h - 1 / (2 * beta)) ** 2


def pairs(sizes, device='cpu'):
    """(better, worse): indices, in the flat list of answers (prompt after prompt, each ranked best
    first), of every pair of each prompt's answers: K-choose-2 each."""
    better, worse, start = [], [], 0
    for k in sizes:
        i, j = torch.triu_indices(k, k, offset=1, device=device)
        better.append(i + start)
        worse.append(j + start)
        start += k
    return torch.cat(better), torch.cat(worse)


def pair_accuracy(h, gold_diff):
    """The share of pairs the implicit reward orders as the label does (h > 0; a tie counts half),
    and as the gold judge does (gold_diff = gold(better) - gold(worse); only pairs whose gold differs;
    None if there are none, as in rankings without gold scores)."""
    label = ((h > 0).float() + 0.5 * (h == 0).float()).mean().item()
    differ = gold_diff != 0
    agree = torch.where(h == 0, 0.5, ((h > 0) == (gold_diff > 0)).float())[differ]
    return label, agree.mean().item() if differ.any() else None


def sequence_logprobs(model, examples, device, chunk=16):
    """log p(answer | prompt) of each (inputs, targets) example (sft.tokenize): summed over the
    answer's tokens and its <|end|>, the prompt masked. Computed in runs of chunk examples of
    similar length (little padding), returned in the examples' order."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    out = []
    for i in range(0, len(order), chunk):
        x, y = collate(examples, order[i:i + chunk], device)
        logits = model(x)[0].float()
        out.append(-F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1, reduction='none').view_as(y).sum(1))
    return torch.cat(out)[torch.argsort(torch.tensor(order, device=device))] if out else torch.zeros(0, device=device)


@torch.no_grad()
def all_logprobs(model, examples, autocast, device):
    model.eval()
    with autocast:
        out = sequence_logprobs(model, examples, device, chunk=64)
    model.train()
    return out.float()


def conversations(enc, rows, block_size):
    """Each ranking's answers as SFT examples (prompt, answer), prompt after prompt, best first."""
    as_messages = lambda p: [dict(role='user', content=p)] if isinstance(p, str) else p
    return tokenize(enc, [as_messages(r['prompt']) + [dict(role='assistant', content=a)] for r in rows for a in r['answers']],
                    block_size)


def vs_gold(acc_gold):
    return '' if acc_gold is None else f', {acc_gold:.1%} vs gold'


def main():
    config = configure(globals())
    if loss not in ('dpo', 'ipo') or beta <= 0:
        sys.exit(f'error: --loss must be dpo or ipo (got {loss!r}) and --beta above 0 (got {beta})')
    if eval_interval < 1 or ckpt_interval < 0:
        sys.exit(f'error: --eval_interval must be at least 1 (got {eval_interval}) and --ckpt_interval at least 0 '
                 f'(got {ckpt_interval}; 0: a checkpoint only before the final evaluation)')
    rank, world_size, dev, autocast = setup(device, dtype, seed)
    master = rank == 0
    policy, ckpt = load_checkpoint(os.path.join(init_from, 'ckpt.pt'), 'python sft.py', dev, scalar_head=False)
    ref, _ = load_checkpoint(os.path.join(ref_from, 'ckpt.pt'), 'python sft.py', dev, scalar_head=False)
    ref.eval().requires_grad_(False)
    enc = load_tokenizer(ckpt['tokenizer'])
    ranking_files = [path for path in (rankings + ',' + eval_rankings).split(',') if path]
    for path in ranking_files:
        if path.startswith('out/reward/') and not os.path.exists(path):
            sys.exit(f'error: {path} not found: run python reward.py first')
    train_rows = read_jsonl(rankings, is_ranking, '{"prompt": ..., "answers": [best, ..., worst]}')
    eval_rows = read_jsonl(eval_rankings, is_ranking, '{"prompt": ..., "answers": [...], "gold": [...]}')
    if not train_rows:
        sys.exit(f'error: {rankings}: no rankings to learn from')
    inputs = [os.path.join(init_from, 'ckpt.pt'), os.path.join(ref_from, 'ckpt.pt')] + ranking_files
    resumed = resumable(out_dir, config, inputs, dev)  # a killed run of this command: go on from its checkpoint
    if resumed:
        policy.load_state_dict(resumed['model'])
    block_size = policy.config.block_size
    train_sets = [conversations(enc, [r], block_size) for r in train_rows]  # the answers of each prompt
    eval_set = conversations(enc, eval_rows, block_size)
    eval_sizes = [len(r['answers']) for r in eval_rows]
    gold = torch.tensor([g for r in eval_rows for g in r.get('gold', [0.0] * len(r['answers']))], device=dev)
    data_dir = ckpt.get('data_dir', 'out/data/world')
    world = tasks.load_world(data_dir)
    eval_prompts = tasks.prompt_set(world, 'eval', n_eval) if world and n_eval else []

    # the reference's log-probs of every answer, once (each rank a share of the prompts, then gathered)
    t0 = time.time()
    lo, hi = len(train_sets) * rank // world_size, len(train_sets) * (rank + 1) // world_size
    mine = all_logprobs(ref, [e for s in train_sets[lo:hi] for e in s], autocast, dev).tolist()
    ref_train = torch.tensor(all_gather(mine), device=dev).split([len(s) for s in train_sets])
    ref_eval = all_logprobs(ref, eval_set, autocast, dev)
    start = resumed['iter_num'] if resumed else 0
    if master:
        os.makedirs(out_dir, exist_ok=True)
        keep_metrics(os.path.join(out_dir, 'metrics.jsonl'), start)
        print(f'{len(train_rows)} rankings ({sum(map(len, train_sets))} answers, '
              f'{sum(len(s) * (len(s) - 1) // 2 for s in train_sets)} pairs) from {rankings}; {len(eval_rows)} held out; '
              f'reference log-probs in {time.time() - t0:.0f} s')
        if resumed:
            print(f'resuming at iteration {start}')

    def log(**row):
        if master:
            with open(os.path.join(out_dir, 'metrics.jsonl'), 'a') as f:
                f.write(json.dumps(row) + '\n')

    def evaluate(it):
        """Implicit-reward accuracy and the chosen and rejected log-probs on the held-out rankings."""
        if not eval_rows:
            return {}
        same = it == 0 and init_from == ref_from  # (then the policy is the reference)
        logp = ref_eval if same else all_logprobs(policy, eval_set, autocast, dev)
        better, worse = pairs(eval_sizes, dev)
        h = (logp - ref_eval)[better] - (logp - ref_eval)[worse]
        acc_label, acc_gold = pair_accuracy(h, gold[better] - gold[worse])
        row = dict(iter=it, acc_label=acc_label, acc_gold=acc_gold, chosen_logp=logp[better].mean().item(),
                   rejected_logp=logp[worse].mean().item(), margin=beta * h.mean().item())
        if master:
            tqdm.write(f'iter {it}: held-out implicit-reward accuracy {acc_label:.1%} vs labels{vs_gold(acc_gold)}; '
                       f'log-probs chosen {row["chosen_logp"]:.2f}, rejected {row["rejected_logp"]:.2f}')
        log(kind='implicit', **row)
        return row

    def judge(it):
        """The policy's answers to the world's held-out prompts (each rank a share): the gold judge's
        score, and log pi - log pi_ref of those answers, the sampled estimate of the KL to SFT."""
        if not eval_prompts:
            return {}
        mine = eval_prompts[rank::world_size]
        with autocast:
            tokens = sample_answers(policy.eval(), enc, mine, max_new_tokens, temperature,
                                    progress=f'answering (held out, iter {it})' if master else None)
        policy.train()
        answers = [answer_text(enc, t) for t in tokens]
        examples = conversations(enc, [dict(prompt=p, answers=[a]) for p, a in zip(mine, answers)], block_size)
        kl = (all_logprobs(policy, examples, autocast, dev) - all_logprobs(ref, examples, autocast, dev)).tolist()
        rows = all_gather(zip(mine, answers, kl, map(len, tokens)))
        summary = tasks.summarize(world, [r[0] for r in rows], [r[1] for r in rows])
        row = dict(gold=summary['gold'], gold_stderr=summary['gold_stderr'], kinds=summary['kinds'], splits=summary['splits'],
                   criteria=summary['criteria'], kl=sum(r[2] for r in rows) / len(rows),
                   length=sum(r[3] for r in rows) / len(rows))
        log(kind='eval', iter=it, **row)  # (report.py draws these on the frontier)
        if master:
            tqdm.write(f'iter {it}: held-out gold {row["gold"]:.3f}, KL to SFT {row["kl"]:.2f}')
            with open(os.path.join(out_dir, 'answers.jsonl'), 'w') as f:
                f.writelines(json.dumps(dict(prompt=p, answer=a, gold=s)) + '\n'
                             for (p, a, _, _), s in zip(rows, summary['scores']))
        return dict(row, summary=summary)

    trained = policy
    if dist.is_initialized():
        trained = DDP(policy, device_ids=[torch.device(dev).index] if dev.startswith('cuda') else None)
    optimizer = make_optimizer(policy, lr, weight_decay, dev)
    lengths = [max(len(x) for x, _ in s) for s in train_sets]
    n_batches, epoch_batches = max(1, len(train_sets) // batch_size), {}
    iters = max(1, int(epochs * n_batches) // world_size)
    meta = dict(config=config, tokenizer=ckpt['tokenizer'], stage='dpo', data_dir=data_dir,
                answers_sampled=0)  # (it learns from the RM's ranked answers only)

    if resumed:
        optimizer.load_state_dict(resumed['optimizer'])
        first, t0 = resumed['first'], t0 - resumed['train_time']
    else:
        first = evaluate(0)

    def save(it):
        """What a killed run needs to go on at step it: weights, optimizer (and random state, save_progress's)."""
        save_progress(os.path.join(out_dir, 'ckpt.pt'), policy, inputs, **meta, iter_num=it,
                      optimizer=optimizer.state_dict(), first=first, train_time=time.time() - t0)

    if resumed and start % eval_interval == 0 and start < iters:  # killed during that evaluation: again
        evaluate(start)
        judge(start)
    # the batches of a step depend only on its number: a resumed run sees the data in the same order
    bar = tqdm(range(start, iters), initial=start, total=iters, desc=loss, disable=not master, dynamic_ncols=True)
    for it in bar:
        number = it * world_size + rank  # this rank's batch, counted over all ranks
        epoch = number // n_batches
        if epoch not in epoch_batches:  # a new epoch: a new order, prompts of similar length together
            epoch_batches = {epoch: batches(lengths, batch_size, seed + epoch)}
        ids = epoch_batches[epoch][number % n_batches]
        sizes = [len(train_sets[i]) for i in ids]
        for group in optimizer.param_groups:
            group['lr'] = lr_at(it, lr, min_lr, warmup_iters, iters)
        with autocast:  # each answer's log-prob once; every pair of its prompt reuses it
            logp = sequence_logprobs(trained, [e for i in ids for e in train_sets[i]], dev)
        ratio = logp - torch.cat([ref_train[i] for i in ids])
        better, worse = pairs(sizes, dev)
        h = ratio[better] - ratio[worse]
        loss_value = (dpo_loss if loss == 'dpo' else ipo_loss)(h, beta).mean()
        loss_value.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if it % 10 == 0 or it + 1 == iters:
            row = dict(iter=it, loss=all_mean(loss_value.detach()), chosen_logp=all_mean(logp[better].mean().detach()),
                       rejected_logp=all_mean(logp[worse].mean().detach()), acc=all_mean((h > 0).float().mean()))
            log(kind='train', **row)
            bar.set_postfix(loss=f'{row["loss"]:.3f}', acc=f'{row["acc"]:.2f}')
        # (saved before that step's evaluation: a run killed during it does it again)
        if (ckpt_interval and (it + 1) % ckpt_interval == 0) or it + 1 == iters:
            save(it + 1)
        if (it + 1) % eval_interval == 0 and it + 1 < iters:
            evaluate(it + 1)
            judge(it + 1)
    last = evaluate(iters)
    metrics = dict(implicit=last, **judge(iters))
    summary = metrics.pop('summary', None)
    if master:  # the finished checkpoint, which later stages can load
        save_checkpoint(os.path.join(out_dir, 'ckpt.pt'), policy, **meta, iter_num=iters, metrics=metrics,
                        train_time=time.time() - t0)
        if summary:
            print(f'{loss} (beta {beta}): held-out ' + tasks.report(summary)
                  + f'\n  KL to SFT {metrics["kl"]:.2f} nats per answer (sampled), length {metrics["length"]:.0f} tokens')
        if last:
            print(f'held-out implicit-reward accuracy {first["acc_label"]:.1%} -> {last["acc_label"]:.1%} vs labels'
                  f'{vs_gold(last["acc_gold"])}; log-probs chosen {first["chosen_logp"]:.2f} -> {last["chosen_logp"]:.2f}, '
                  f'rejected {first["rejected_logp"]:.2f} -> {last["rejected_logp"]:.2f}')
        print(f'checkpoint {out_dir}/ckpt.pt ({time.time() - t0:.0f} s)')
    teardown()


if __name__ == '__main__':
    main()
