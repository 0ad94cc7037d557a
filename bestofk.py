"""
The seed's alternative to PPO: best-of-K fine-tuning (rejection sampling, "expert iteration").
For each new prompt (the 'rl' set, the prompts PPO sees), the SFT model writes K answers, the
reward model scores them, the best becomes a <prompt, answer> demonstration, and the model is
fine-tuned on those with the SFT loss (sft.py's loop). Reads out/sft and out/reward, writes
out/bestofk/ckpt.pt. Optionally again: sample from the fine-tuned model, fine-tune again (rounds).

  python bestofk.py                       # K = 8
  python bestofk.py --k=16 --rounds=2     # two rounds of expert iteration
  python bestofk.py --min_score=0.5       # keep only best answers the RM scores at least 0.5

It also measures plain best-of-K at inference time (no fine-tuning: sample K, answer with the one
the RM likes best) for K = 1, 2, 4, ..., eval_k on the held-out prompts. That policy's KL to the
SFT model is known exactly: log K - (K-1)/K (Stiennon et al. 2020; Gao et al. 2022).

Run it again after a kill: it goes on with the answers it kept (saved as soon as chosen) from its
last fine-tuning checkpoint (every ckpt_interval steps).

A model of real data (run.sh's DATA=real) answers the prompts of files (--prompt_file, --eval_prompt_file:
data/hh_rlhf.py's prompts.jsonl and eval_prompts.jsonl), and with no gold judge the log has RM scores only.
"""
import math
import os
import time

import torch
import torch.distributed as dist

from data import tasks
from data.hh_rlhf import read_prompts
from model import (all_gather, answer_text, configure, load_checkpoint, load_tokenizer, resumable, sample_answers,
                   save_checkpoint, save_progress, setup, teardown)
from reward import score_pairs
from sft import collate, finetune, tokenize

# ----------------------------------------------------------------------------- config
init_from = 'out/sft'
reward_model = 'out/reward'
out_dir = 'out/bestofk'
n_prompts = 1024              # the world's 'rl' prompts answered K times each round
prompt_file = ''              # a model not trained on the world: its prompts, JSONL of {"prompt": "text"}
eval_prompt_file = ''         #   and its held-out ones (data/hh_rlhf.py's prompts.jsonl and eval_prompts.jsonl)
k = 8                         # answers per prompt: the best of them is kept
min_score = float('-inf')     # keep a best answer only if the RM scores it at least this
rounds = 1                    # rounds of sample -> select -> fine-tune
n_eval = 400                  # held-out prompts
eval_k = 16                   # inference-time best-of-K for K = 1, 2, 4, ... up to this
max_new_tokens = 128
temperature = 1.0
# fine-tuning (sft.py's loop)
iters = 150                   # steps per round
ckpt_interval = 50            # a checkpoint every this many steps: a killed run, started again, goes on from it
batch_size = 32
lr = 1e-3
min_lr = 1e-4
warmup_iters = 5
weight_decay = 0.1
grad_clip = 1.0
# system
device = 'auto'
dtype = 'auto'
compile = True
seed = 1337
# -----------------------------------------------------------------------------


def select_best(prompts, answers, scores, k, min_score=float('-inf')):
    """[(prompt, its best answer)]: prompts[i]'s answers are answers[i*k:(i+1)*k]. The highest score
    wins (a tie: the first of them); a prompt whose best scores below min_score, or -inf (no answer
    ended), gives none."""
    chosen = []
    for i, prompt in enumerate(prompts):
        group = scores[i * k:(i + 1) * k]
        best = max(range(k), key=lambda j: group[j])  # (max keeps the first of equal scores)
        if group[best] > float('-inf') and group[best] >= min_score:
            chosen.append((prompt, answers[i * k + best]))
    return chosen


@torch.no_grad()
def score_answers(rm, enc, prompts, tokens, autocast, device):
    """The RM's score of each answer (a row of prompts x answers); -inf for one that never ended."""
    end = enc.encode_single_token('<|end|>')
    scores = score_pairs(rm, enc, [(p, answer_text(enc, t)) for p, t in zip(prompts, tokens)], autocast, device)
    return [s if t and t[-1] == end else float('-inf') for s, t in zip(scores, tokens)]


@torch.no_grad()
def answer_logprob(model, enc, pairs, autocast, device):
    """log p(answer | prompt) under a model, summed over the answer's tokens and its <|end|>."""
    examples = tokenize(enc, [[dict(role='user', content=p), dict(role='assistant', content=a)] for p, a in pairs],
                        model.config.block_size)
    out = []
    for i in range(0, len(examples), 64):
        x, y = collate(examples, range(i, min(i + 64, len(examples))), device)
        with autocast:
            logits = model(x)[0].float()
        logp = torch.log_softmax(logits, -1).gather(2, y.clamp(min=0)[..., None]).squeeze(2)
        out += (logp * (y != -1)).sum(1).tolist()
    return out


def main():
    config = configure(globals())
    rank, world_size, dev, autocast = setup(device, dtype, seed)
    master = rank == 0
    model, ckpt = load_checkpoint(os.path.join(init_from, 'ckpt.pt'), 'python sft.py', dev, scalar_head=False)
    sft_model, _ = load_checkpoint(os.path.join(init_from, 'ckpt.pt'), 'python sft.py', dev, scalar_head=False)
    rm, _ = load_checkpoint(os.path.join(reward_model, 'ckpt.pt'), 'python reward.py', dev, scalar_head=True)
    sft_model.eval(), rm.eval()
    inputs = [os.path.join(init_from, 'ckpt.pt'), os.path.join(reward_model, 'ckpt.pt')] + \
             [path for path in (prompt_file, eval_prompt_file) if path]
    resumed = resumable(out_dir, config, inputs, dev)  # a killed run of this command: go on from its checkpoint
    if resumed:
        model.load_state_dict(resumed['model'])
        print(f'resuming at round {resumed["round"] + 1}, step {resumed["iter_num"]}')
    enc = load_tokenizer(ckpt['tokenizer'])
    data_dir = ckpt.get('data_dir', 'out/data/world')
    world = tasks.load_world(data_dir)
    if world is None and not (prompt_file and eval_prompt_file):  # (a model of other data: no gold judge)
        raise SystemExit('error: the policy was not trained on the world: pass --prompt_file and --eval_prompt_file, '
                         'JSONL of {"prompt": "..."} (data/hh_rlhf.py writes them)')
    if k < 1 or eval_k < 1:
        raise SystemExit('error: k and eval_k must be at least 1')
    t0 = time.time()

    def best_of(policy, prompts, n, desc):
        """n answers to each of this rank's prompts: (tokens, RM scores), prompt after prompt."""
        with autocast:
            tokens = sample_answers(policy.eval(), enc, [p for p in prompts for _ in range(n)], max_new_tokens,
                                    temperature, progress=desc if master else None)
        return tokens, score_answers(rm, enc, [p for p in prompts for _ in range(n)], tokens, autocast, dev)

    def save(r, it, chosen, optimizer=None):  # what a killed run needs to go on: this round's kept answers, its step
        save_progress(os.path.join(out_dir, 'ckpt.pt'), model, inputs, config=config, tokenizer=ckpt['tokenizer'],
                      stage='bestofk', data_dir=data_dir, round=r, iter_num=it, chosen=chosen,
                      optimizer=optimizer and optimizer.state_dict())

    for r in range(resumed['round'] if resumed else 0, rounds):
        if resumed and resumed['round'] == r:  # the answers it kept before the kill, not new ones
            chosen, start, optimizer_state = resumed['chosen'], resumed['iter_num'], resumed['optimizer']
        else:
            prompts = (tasks.prompt_set(world, 'rl', n_prompts, seed=r) if world
                       else read_prompts(prompt_file, n_prompts))[rank::world_size]
            tokens, scores = best_of(model, prompts, k, f'round {r + 1}: {k} answers per prompt')
            chosen = all_gather(select_best(prompts, [answer_text(enc, t) for t in tokens], scores, k, min_score))
            start, optimizer_state = 0, None
            save(r, 0, chosen)
            if master:
                gold = sum(tasks.score(world, p, a)[0] for p, a in chosen) / max(len(chosen), 1) if world else None
                print(f'round {r + 1}: kept {len(chosen)} best answers of {n_prompts} prompts ('
                      + (f'mean gold {gold:.3f}, for the log only; ' if world else '') + 'the RM chose them)')
        if not chosen:
            raise SystemExit('error: no answer was kept: lower --min_score or raise --max_new_tokens')
        examples = tokenize(enc, [[dict(role='user', content=p), dict(role='assistant', content=a)] for p, a in chosen],
                            model.config.block_size)
        model.train()
        finetune(model, examples, iters, lr, batch_size, autocast, dev, min_lr, warmup_iters, weight_decay, grad_clip,
                 seed + r, compile, desc=f'round {r + 1}: fine-tuning', save=lambda it, opt: save(r, it, chosen, opt),
                 ckpt_interval=ckpt_interval, start=start, optimizer_state=optimizer_state)
    # (the last round's last checkpoint, at step iters, is the one saved before the long evaluation)

    # evaluation on the held-out prompts: the fine-tuned model, and best-of-K sampling from the SFT model
    eval_prompts = (tasks.prompt_set(world, 'eval', n_eval) if world
                    else read_prompts(eval_prompt_file, n_eval))[rank::world_size]
    tokens, scores = best_of(model, eval_prompts, 1, 'answering (fine-tuned)')
    answers = [answer_text(enc, t) for t in tokens]
    kl = [a - b for a, b in zip(answer_logprob(model, enc, list(zip(eval_prompts, answers)), autocast, dev),
                                answer_logprob(sft_model, enc, list(zip(eval_prompts, answers)), autocast, dev))]
    tuned = all_gather(zip(eval_prompts, answers, scores, kl, map(len, tokens)))
    sft_tokens, sft_scores = best_of(sft_model, eval_prompts, eval_k, f'answering {eval_k}x (SFT)')
    sampled = all_gather((p, [answer_text(enc, t) for t in sft_tokens[i * eval_k:(i + 1) * eval_k]],
                          sft_scores[i * eval_k:(i + 1) * eval_k]) for i, p in enumerate(eval_prompts))
    if master:
        finished = [row[2] for row in tuned if row[2] > float('-inf')]
        summary = tasks.summarize(world, [row[0] for row in tuned], [row[1] for row in tuned]) if world else None
        metrics = dict(rm_score=sum(finished) / max(len(finished), 1), kl=sum(row[3] for row in tuned) / len(tuned),
                       length=sum(row[4] for row in tuned) / len(tuned), best_of_k=[])
        if summary:
            metrics.update(gold=summary['gold'], gold_stderr=summary['gold_stderr'], kinds=summary['kinds'],
                           splits=summary['splits'], criteria=summary['criteria'])
        print(f'best-of-{k} fine-tuned: held-out ' + (tasks.report(summary) + '\n  ' if summary else '')
              + f'RM score {metrics["rm_score"]:+.3f}, '
              f'KL to SFT {metrics["kl"]:.2f} nats per answer (sampled), length {metrics["length"]:.0f} tokens')
        print('inference-time best-of-K from the SFT model (no fine-tuning):\n     K   gold    ±     RM score   KL bound')
        n = 1
        while n <= eval_k:
            picks = [select_best([p], answers_[:n], scores_[:n], n) for p, answers_, scores_ in sampled]
            picks = [pick[0] if pick else (p, answers_[0]) for pick, (p, answers_, _) in zip(picks, sampled)]
            s = (tasks.summarize(world, [p for p, _ in picks], [a for _, a in picks]) if world
                 else dict(gold=None, gold_stderr=None))
            rm_best = [max(scores_[:n]) for _, _, scores_ in sampled if max(scores_[:n]) > float('-inf')]
            row = dict(k=n, gold=s['gold'], gold_stderr=s['gold_stderr'], rm_score=sum(rm_best) / max(len(rm_best), 1),
                       kl_bound=math.log(n) - (n - 1) / n)
            metrics['best_of_k'].append(row)
            gold = f'{row["gold"]:.3f}  {row["gold_stderr"]:.3f}' if world else '  -      -  '
            print(f'  {n:4d}  {gold}  {row["rm_score"]:+.3f}    {row["kl_bound"]:.2f}')
            n *= 2
        save_checkpoint(os.path.join(out_dir, 'ckpt.pt'), model, config=config, tokenizer=ckpt['tokenizer'],
                        stage='bestofk', data_dir=data_dir, answers_sampled=rounds * n_prompts * k, metrics=metrics,
                        train_time=time.time() - t0)
        print(f'checkpoint {out_dir}/ckpt.pt ({time.time() - t0:.0f} s)')
    if dist.is_initialized():
        dist.barrier()
    teardown()


if __name__ == '__main__':
    main()
