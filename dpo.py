"""
Direct preference optimisation (DPO; Rafailov et al. 2023): the policy learns from the RM's rankings
(out/reward/rankings.jsonl) with no reward model and no sampling, against the frozen SFT model.
Writes out/dpo/ckpt.pt; killed, the same command goes on. The README explains more ("DPO").

  python dpo.py                 # DPO
  python dpo.py --beta=0.3      # a stronger pull toward SFT (exercise: sweep it, watch KL and gold)
  python dpo.py --loss=ipo      # IPO (Azar et al. 2023): the margin regressed to 1/(2 beta)

A ranking whose prompt leaves no room for max_new_tokens in the context is dropped and counted
(model.fitting, the rule of every stage); a longer answer is cut at the context's end.
"""
import os
import sys
import time
from itertools import accumulate

import torch
import torch.nn.functional as F
from tqdm import tqdm

from data import tasks
from data.formats import read_rankings, write_jsonl
from model import (all_mean, answer_examples, answer_prompts, answer_text, configure,
                   epoch_batch, fitting, keep_metrics, load_checkpoint, load_tokenizer, log_row,
                   logprobs_of, lr_at, make_optimizer, rank_and_size, resumable, sampled_kl,
                   save_checkpoint, save_progress, sequence_logprobs, set_lr, setup, teardown, wrap)

# ----------------------------------------------------------------------------- config
init_from = 'out/sft'         # the policy starts here
ref_from = 'out/sft'          # the frozen reference
rankings = 'out/reward/rankings.jsonl'  # comma-separated ranking JSONL files (reward.py's format)
eval_rankings = 'out/reward/eval_rankings.jsonl'  # held-out rankings for the accuracy ('': none)
out_dir = 'out/dpo'
loss = 'dpo'                  # 'dpo' (Rafailov et al. 2023) or 'ipo' (Azar et al. 2023)
beta = 0.1                    # DPO's beta (IPO's tau): the weight of the pull toward the reference
n_eval = 400                  # held-out world prompts answered and judged at the end (0: none)
max_new_tokens = 128          # held-out answers; the room a ranking's prompt must leave
temperature = 1.0
# optimization
batch_size = 8                # prompts per step per process, each with all its answers
epochs = 0.5                  # passes over the rankings (0.5: half the prompts, all their pairs)
lr = 2e-4
min_lr = 2e-5
warmup_iters = 10
weight_decay = 0.0
grad_clip = 1.0
eval_interval = 32            # held-out gold score every this often (implicit reward: start, end)
ckpt_interval = 16            # a checkpoint every this many steps: a killed run goes on from it
# system
device = 'auto'
dtype = 'auto'
seed = 1337
# -----------------------------------------------------------------------------


def dpo_loss(h, beta):
    """DPO's loss of each pair (Rafailov et al. 2023, eq. 7): -log sigmoid(beta h), h the chosen
    answer's log pi - log pi_ref minus the rejected one's. At the start (pi = pi_ref): log 2."""
    return -F.logsigmoid(beta * h)


def ipo_loss(h, beta):
    """IPO's loss (Azar et al. 2023): (h - 1/(2 tau))^2, tau = beta: a finite target margin."""
    return (h - 1 / (2 * beta)) ** 2


def pairs(sizes, device='cpu'):
    """(better, worse): each prompt's answer pairs, as indices in the flat list (best first)."""
    both = [torch.triu_indices(k, k, offset=1, device=device) + start
            for k, start in zip(sizes, accumulate([0] + sizes[:-1]))]
    return tuple(torch.cat(both, dim=1))


def pair_accuracy(h, gold_diff):
    """The share of pairs the implicit reward (DPO paper, section 5) orders as the label (h > 0, a
    tie half) and as gold: pairs whose gold differs only (None if none, as without gold scores)."""
    label = ((h > 0).float() + 0.5 * (h == 0).float()).mean().item()
    differ = gold_diff != 0
    agree = torch.where(h == 0, 0.5, ((h > 0) == (gold_diff > 0)).float())[differ]
    return label, agree.mean().item() if differ.any() else None


def check_flags(loss, beta, eval_interval, ckpt_interval):
    if loss not in ('dpo', 'ipo') or beta <= 0:
        sys.exit(f'error: --loss must be dpo or ipo (got {loss!r}) and --beta above 0 (got {beta})')
    if eval_interval < 1 or ckpt_interval < 0:
        sys.exit(f'error: --eval_interval must be at least 1 (got {eval_interval}) and '
                 f'--ckpt_interval at least 0 (got {ckpt_interval}; 0: a checkpoint only before '
                 'the final evaluation)')


def ranking_examples(enc, rows, block_size):
    """Each ranking's answers as SFT examples (prompt, answer), prompt after prompt, best first."""
    return answer_examples(enc, [r['prompt'] for r in rows for _ in r['answers']],
                           [a for r in rows for a in r['answers']], block_size)


def load_inputs(init_from, ref_from, rankings, eval_rankings, max_new_tokens, device):
    """The policy, its checkpoint, its tokenizer, the frozen reference, the rankings whose prompts
    leave max_new_tokens for an answer (model.fitting: the others dropped), and every file read."""
    inputs = [os.path.join(init_from, 'ckpt.pt'), os.path.join(ref_from, 'ckpt.pt')]
    (policy, ckpt), (ref, _) = [load_checkpoint(path, 'python sft.py', device, scalar_head=False)
                                for path in inputs]
    inputs += [path for path in (rankings + ',' + eval_rankings).split(',') if path]
    for path in inputs[2:]:
        if path.startswith('out/reward/') and not os.path.exists(path):
            sys.exit(f'error: {path} not found: run python reward.py first')
    train_rows, eval_rows = read_rankings(rankings), read_rankings(eval_rankings)
    if not train_rows:
        sys.exit(f'error: {rankings}: no rankings to learn from')
    enc, block_size = load_tokenizer(ckpt['tokenizer']), policy.config.block_size
    train_rows = fitting(enc, train_rows, block_size, max_new_tokens, rankings)
    eval_rows = fitting(enc, eval_rows, block_size, max_new_tokens, eval_rankings)
    return policy, ckpt, enc, ref.eval().requires_grad_(False), train_rows, eval_rows, inputs


def reference_logprobs(ref, train_sets, needed, autocast, device):
    """The reference's log-probs of the answers of each prompt in needed (the prompts this rank's
    steps reach: with epochs = 0.5, half of them), {prompt's index: a tensor, one per answer}."""
    needed = sorted(needed)
    logp = logprobs_of(ref, [e for i in needed for e in train_sets[i]], autocast, device)
    return dict(zip(needed, logp.split([len(train_sets[i]) for i in needed])))


def held_out_data(ref, enc, eval_rows, data_dir, n_eval, block_size, autocast, device, **settings):
    """measure()'s arguments: the held-out rankings, the world's held-out prompts, and settings."""
    eval_set, world = ranking_examples(enc, eval_rows, block_size), tasks.load_world(data_dir)
    gold = [g for r in eval_rows for g in r.get('gold', [0.0] * len(r['answers']))]
    prompts = tasks.prompt_set(world, 'eval', n_eval) if world and n_eval else []
    return dict(eval_set=eval_set, ref_eval=logprobs_of(ref, eval_set, autocast, device),
                gold=torch.tensor(gold, device=device), world=world, prompts=prompts, ref=ref,
                sizes=[len(r['answers']) for r in eval_rows], enc=enc, autocast=autocast,
                device=device, **settings)


def vs_gold(acc_gold):
    return '' if acc_gold is None else f', {acc_gold:.1%} vs gold'


def measure(policy, it, *, ref, enc, eval_set, ref_eval, sizes, gold, world, prompts, beta,
            max_new_tokens, temperature, autocast, device, out_dir, answer=True, rankings=True,
            policy_is_ref=False):
    """The policy at step it, printed and logged: if rankings, its implicit-reward accuracy on the
    held-out rankings; if answer, its held-out answers (answers.jsonl), their gold and KL to SFT."""
    metrics_path, master = os.path.join(out_dir, 'metrics.jsonl'), rank_and_size()[0] == 0
    implicit, judged, summary = {}, {}, None
    if eval_set and rankings:
        logp = ref_eval if policy_is_ref else logprobs_of(policy, eval_set, autocast, device)
        better, worse = pairs(sizes, device)
        h = (logp - ref_eval)[better] - (logp - ref_eval)[worse]
        acc_label, acc_gold = pair_accuracy(h, gold[better] - gold[worse])
        implicit = dict(iter=it, acc_label=acc_label, acc_gold=acc_gold,
                        chosen_logp=logp[better].mean().item(),
                        rejected_logp=logp[worse].mean().item(), margin=beta * h.mean().item())
        if master:
            tqdm.write(f'iter {it}: held-out implicit-reward accuracy {acc_label:.1%} vs labels'
                       f'{vs_gold(acc_gold)}; log-probs chosen {implicit["chosen_logp"]:.2f}, '
                       f'rejected {implicit["rejected_logp"]:.2f}')
        log_row(metrics_path, dict(kind='implicit', **implicit))
    if answer and prompts:
        tokens = answer_prompts(policy, enc, prompts, max_new_tokens, temperature, autocast,
                                progress=f'answering (held out, iter {it})')
        answers = [answer_text(enc, t) for t in tokens]
        kl = sampled_kl(policy, ref, enc, prompts, answers, autocast, device)
        summary = tasks.summarize(world, prompts, answers)
        judged = dict(tasks.gold_fields(summary), kl=sum(kl) / len(kl),
                      length=sum(map(len, tokens)) / len(tokens))
        log_row(metrics_path, dict(kind='eval', iter=it, **judged))  # (report.py draws these)
        if master:
            tqdm.write(f'iter {it}: held-out gold {judged["gold"]:.3f}, '
                       f'KL to SFT {judged["kl"]:.2f}')
            write_jsonl(os.path.join(out_dir, 'answers.jsonl'), [dict(prompt=p, answer=a, gold=s)
                        for p, a, s in zip(prompts, answers, summary['scores'])])
    return implicit, judged, summary


def print_results(loss, beta, summary, metrics, first, last):
    if summary:
        print(f'{loss} (beta {beta}): held-out ' + tasks.report(summary) + '\n  KL to SFT '
              f'{metrics["kl"]:.2f} nats per answer (sampled), '
              f'length {metrics["length"]:.0f} tokens')
    if last:
        print(f'held-out implicit-reward accuracy {first["acc_label"]:.1%} -> '
              f'{last["acc_label"]:.1%} vs labels{vs_gold(last["acc_gold"])}; log-probs chosen '
              f'{first["chosen_logp"]:.2f} -> {last["chosen_logp"]:.2f}, '
              f'rejected {first["rejected_logp"]:.2f} -> {last["rejected_logp"]:.2f}')


def main():
    config = configure(globals())
    check_flags(loss, beta, eval_interval, ckpt_interval)
    rank, world_size, device, autocast = setup(config['device'], dtype, seed)
    policy, ckpt, enc, ref, train_rows, eval_rows, inputs = load_inputs(
        init_from, ref_from, rankings, eval_rankings, max_new_tokens, device)
    resumed = resumable(out_dir, config, inputs, device)  # a killed run: go on from its checkpoint
    start, block_size = resumed['iter_num'] if resumed else 0, policy.config.block_size
    train_sets = [ranking_examples(enc, [r], block_size) for r in train_rows]  # a prompt's answers
    data_dir = ckpt.get('data_dir', 'out/data/world')
    lengths = [max(len(x) for x, _ in s) for s in train_sets]
    iters = max(1, int(epochs * max(1, len(train_sets) // batch_size)) // world_size)
    # the reference's log-probs of the answers this rank's steps will read, once
    t0 = time.time()
    needed = {i for it in range(iters) for i in epoch_batch(it, lengths, batch_size, seed)}
    ref_train = reference_logprobs(ref, train_sets, needed, autocast, device)
    held_out = held_out_data(ref, enc, eval_rows, data_dir, n_eval, block_size, autocast, device,
                             beta=beta, max_new_tokens=max_new_tokens, temperature=temperature,
                             out_dir=out_dir)
    if rank == 0:
        os.makedirs(out_dir, exist_ok=True)
        keep_metrics(os.path.join(out_dir, 'metrics.jsonl'), start)
        print(f'{len(train_rows)} rankings ({sum(map(len, train_sets))} answers, '
              f'{sum(len(s) * (len(s) - 1) // 2 for s in train_sets)} pairs) from {rankings}; '
              f'{len(eval_rows)} held out; reference log-probs of the {len(needed)} the '
              f'{iters} steps reach in {time.time() - t0:.0f} s')
        if resumed:
            print(f'resuming at iteration {start}')
    trained = wrap(policy, device)
    optimizer = make_optimizer(policy, lr, weight_decay, device)
    about = dict(config=config, tokenizer=ckpt['tokenizer'], stage='dpo', data_dir=data_dir,
                 answers_sampled=0)  # (it learns from the RM's ranked answers only)
    if resumed:
        policy.load_state_dict(resumed['model'])
        optimizer.load_state_dict(resumed['optimizer'])
        first, t0 = resumed['first'], t0 - resumed['train_time']
        if start % eval_interval == 0 and start < iters:  # killed in that evaluation: again
            measure(policy, start, **held_out, rankings=False)
    else:  # (at step 0 with init_from = ref_from, the policy is the reference)
        first = measure(policy, 0, **held_out, answer=False, policy_is_ref=init_from == ref_from)[0]
    # the batches of a step depend only on its number: a resumed run sees the data in the same order
    bar = tqdm(range(start, iters), initial=start, total=iters, desc=loss, disable=rank != 0,
               dynamic_ncols=True)
    for it in bar:
        ids = epoch_batch(it, lengths, batch_size, seed)  # prompts of similar length together
        set_lr(optimizer, lr_at(it, lr, min_lr, warmup_iters, iters))
        with autocast:  # each answer's log-prob once; every pair of its prompt reuses it
            logp = sequence_logprobs(trained, [e for i in ids for e in train_sets[i]], device)
        ratio = logp - torch.cat([ref_train[i] for i in ids])  # log pi - log pi_ref
        better, worse = pairs([len(train_sets[i]) for i in ids], device)
        h = ratio[better] - ratio[worse]
        pair_loss = (dpo_loss if loss == 'dpo' else ipo_loss)(h, beta).mean()
        pair_loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if it % 10 == 0 or it + 1 == iters:  # log
            row = dict(iter=it, loss=all_mean(pair_loss.detach()),
                       chosen_logp=all_mean(logp[better].mean().detach()),
                       rejected_logp=all_mean(logp[worse].mean().detach()),
                       acc=all_mean((h > 0).float().mean()))
            log_row(os.path.join(out_dir, 'metrics.jsonl'), dict(kind='train', **row))
            bar.set_postfix(loss=f'{row["loss"]:.3f}', acc=f'{row["acc"]:.2f}')
        # save (before that step's evaluation: a run killed during it does it again), evaluate
        if (ckpt_interval and (it + 1) % ckpt_interval == 0) or it + 1 == iters:
            save_progress(os.path.join(out_dir, 'ckpt.pt'), policy, inputs, **about,
                          iter_num=it + 1, optimizer=optimizer.state_dict(), first=first,
                          train_time=time.time() - t0)
        if (it + 1) % eval_interval == 0 and it + 1 < iters:  # (the curve's points: gold, KL)
            measure(policy, it + 1, **held_out, rankings=False)
    # the final evaluation and the finished checkpoint, which later stages can load
    last, judged, summary = measure(policy, iters, **held_out)
    metrics = dict(implicit=last, **judged)
    if rank == 0:
        save_checkpoint(os.path.join(out_dir, 'ckpt.pt'), policy, **about, iter_num=iters,
                        metrics=metrics, train_time=time.time() - t0)
        print_results(loss, beta, summary, metrics, first, last)
        print(f'checkpoint {out_dir}/ckpt.pt ({time.time() - t0:.0f} s)')
    teardown()


if __name__ == '__main__':
    main()
