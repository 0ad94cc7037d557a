"""
Best-of-K fine-tuning (rejection sampling, "expert iteration"): the SFT model answers each prompt K
times, the reward model's favourites become demonstrations, the model is fine-tuned on them; and
inference-time best-of-K, measured. Reads out/sft and out/reward, writes out/bestofk/ckpt.pt;
killed, the same command goes on. The README explains more ("Best-of-K fine-tuning").
Real prompts as they come: one leaving no room for max_new_tokens in the context is dropped and
counted (model.fitting); an answer that does not end within max_new_tokens is never kept, a prompt
with no ended answer is skipped and counted, and a round that keeps nothing leaves the model as is.

  python bestofk.py                       # K = 8
  python bestofk.py --k=16 --rounds=2     # two rounds of expert iteration
  python bestofk.py --min_score=0.5       # keep only best answers the RM scores at least 0.5
"""
import math
import os
import sys
import time

from data import tasks
from data.hh_rlhf import read_prompts
from model import (all_gather, answer_examples, answer_text, configure, finetune, fitting,
                   load_checkpoint, load_tokenizer, make_optimizer, rank_and_size, resumable,
                   sample_answers, sampled_kl, save_checkpoint, save_progress, score_pairs, setup,
                   teardown, wrap)

# ----------------------------------------------------------------------------- config
init_from = 'out/sft'
reward_model = 'out/reward'
out_dir = 'out/bestofk'
n_prompts = 1024              # the world's 'rl' prompts answered K times each round
prompt_file = ''              # a model not trained on the world: its prompts, {"prompt": ...} lines
eval_prompt_file = ''         #   and its held-out ones (data/hh_rlhf.py writes both)
k = 8                         # answers per prompt: the best of them is kept
min_score = float('-inf')     # keep a best answer only if the RM scores it at least this
rounds = 1                    # rounds of sample -> select -> fine-tune
n_eval = 400                  # held-out prompts
eval_k = 16                   # inference-time best-of-K for K = 1, 2, 4, ... up to this
max_new_tokens = 128
temperature = 1.0
iters = 150                   # fine-tuning steps per round (sft.py's loop)
ckpt_interval = 50            # a checkpoint every this many steps: a killed run goes on from it
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
    """[(prompt, its best answer)], prompts[i]'s answers being answers[i*k:(i+1)*k]: the first of
    the highest scores, if it reaches min_score and is not -inf (no answer ended)."""
    best = [max(range(i * k, (i + 1) * k), key=scores.__getitem__) for i in range(len(prompts))]
    return [(p, answers[j]) for p, j in zip(prompts, best) if -math.inf < scores[j] >= min_score]


def unended(scores, k):
    """How many prompts (each k scores in a row) have no answer that ended (all scores -inf)."""
    return sum(all(s == -math.inf for s in scores[i:i + k]) for i in range(0, len(scores), k))


def prompts_to_answer(world, split, n, seed, path, enc, block_size, room):
    """The first n prompts of the world's split, or of the prompt file, that leave room tokens for
    the answer in block_size (model.fitting: the others are dropped and counted)."""
    pool = tasks.prompt_set(world, split, n, seed=seed) if world else read_prompts(path)
    return fitting(enc, pool, block_size, room, path or f'{split} prompts')[:n or None]


def kept_line(r, chosen, n, n_unended, k, max_new_tokens, world):
    """What round r kept, of n prompts, and why some were skipped (no answer ended, min_score)."""
    golds = [tasks.score(world, p, a)[0] for p, a in chosen] if world else []
    gold = f'mean gold {sum(golds) / max(len(golds), 1):.3f}, for the log only; ' if world else ''
    line = (f'round {r + 1}: kept {len(chosen)} best answers of {n} prompts '
            f'({gold}the RM chose them)')
    if n_unended:
        line += (f'; skipped {n_unended} prompts none of whose {k} answers ended within '
                 f'max_new_tokens={max_new_tokens}')
    if not chosen:
        line += ('\nround {0}: nothing to fine-tune on, the model stays as it was this round '
                 '(raise --max_new_tokens, train SFT longer, or lower --min_score)').format(r + 1)
    return line


def best_of_k_rows(world, prompts, answers, scores, eval_k):
    """Best-of-K, K = 1, 2, 4, ... eval_k (prompt i's samples at i*eval_k...): gold and RM score of
    the RM's picks, their exact KL, log K - (K-1)/K (Stiennon et al. 2020; Gao et al. 2022)."""
    rows = []
    for n in (2 ** i for i in range(eval_k.bit_length())):
        best = [max(range(i * eval_k, i * eval_k + n), key=scores.__getitem__)
                for i in range(len(prompts))]
        summary = tasks.summarize(world, prompts, [answers[j] for j in best]) if world else {}
        rm_best = [scores[j] for j in best if scores[j] > -math.inf]
        rows.append(dict(k=n, gold=summary.get('gold'), gold_stderr=summary.get('gold_stderr'),
                         rm_score=sum(rm_best) / max(len(rm_best), 1),
                         kl_bound=math.log(n) - (n - 1) / n))
    return rows


def held_out_metrics(world, tuned, sampled, k, eval_k):
    """The metrics of the fine-tuned model's rows (prompt, answer, RM score, KL to SFT, length) and
    the SFT model's (answer, RM score) samples, printed: its figures, then best-of-K's table."""
    prompts, answers, scores, kls, lengths = zip(*tuned)
    finished = [s for s in scores if s > -math.inf]
    metrics = dict(rm_score=sum(finished) / max(len(finished), 1), kl=sum(kls) / len(kls),
                   length=sum(lengths) / len(lengths), ended=len(finished) / len(scores),
                   best_of_k=best_of_k_rows(world, prompts, *zip(*sampled), eval_k))
    summary = tasks.summarize(world, prompts, answers) if world else None
    if summary:
        metrics.update(tasks.gold_fields(summary))
    judged = tasks.report(summary) + '\n  ' if summary else ''
    print(f'best-of-{k} fine-tuned: held-out {judged}RM score {metrics["rm_score"]:+.3f}, '
          f'KL to SFT {metrics["kl"]:.2f} nats per answer (sampled), '
          f'length {metrics["length"]:.0f} tokens, {metrics["ended"]:.0%} ended (the RM score: '
          'of those)')
    print('inference-time best-of-K from the SFT model (no fine-tuning):\n'
          '     K   gold    ±     RM score   KL bound')
    for row in metrics['best_of_k']:
        gold = f'{row["gold"]:.3f}  {row["gold_stderr"]:.3f}' if summary else '  -      -  '
        print(f'  {row["k"]:4d}  {gold}  {row["rm_score"]:+.3f}    {row["kl_bound"]:.2f}')
    return metrics


def best_of(policy, rm, enc, prompts, n, max_new_tokens, temperature, autocast, device, desc):
    """n answers to each prompt, prompt after prompt: tokens, texts, RM scores (-inf: unended)."""
    asked, end = [p for p in prompts for _ in range(n)], enc.encode_single_token('<|end|>')
    with autocast:
        tokens = sample_answers(policy.eval(), enc, asked, max_new_tokens, temperature,
                                progress=desc if rank_and_size()[0] == 0 else None)
    answers = [answer_text(enc, t) for t in tokens]
    scores = score_pairs(rm, enc, list(zip(asked, answers)), autocast, device)
    ended = [s if t and t[-1] == end else float('-inf') for s, t in zip(scores, tokens)]
    return tokens, answers, ended


def main():
    config = configure(globals())
    rank, world_size, device, autocast = setup(config['device'], dtype, seed)
    policy_path, rm_path = os.path.join(init_from, 'ckpt.pt'), os.path.join(reward_model, 'ckpt.pt')
    model, ckpt = load_checkpoint(policy_path, 'python sft.py', device, scalar_head=False)
    sft_model = load_checkpoint(policy_path, 'python sft.py', device, scalar_head=False)[0].eval()
    rm = load_checkpoint(rm_path, 'python reward.py', device, scalar_head=True)[0].eval()
    inputs = [policy_path, rm_path] + [path for path in (prompt_file, eval_prompt_file) if path]
    resumed = resumable(out_dir, config, inputs, device)  # a killed run of this command: go on
    if resumed:
        model.load_state_dict(resumed['model'])
        print(f'resuming at round {resumed["round"] + 1}, step {resumed["iter_num"]}')
    enc = load_tokenizer(ckpt['tokenizer'])
    data_dir = ckpt.get('data_dir', 'out/data/world')
    world = tasks.load_world(data_dir)
    if world is None and not (prompt_file and eval_prompt_file):  # (other data: no gold judge)
        sys.exit('error: the policy was not trained on the world: pass --prompt_file and '
                 '--eval_prompt_file, JSONL of {"prompt": "..."} (data/hh_rlhf.py writes them)')
    if k < 1 or eval_k < 1:
        sys.exit('error: k and eval_k must be at least 1')
    t0, path = time.time(), os.path.join(out_dir, 'ckpt.pt')
    about = dict(config=config, tokenizer=ckpt['tokenizer'], stage='bestofk', data_dir=data_dir)
    sampling = dict(rm=rm, enc=enc, max_new_tokens=max_new_tokens, temperature=temperature,
                    autocast=autocast, device=device)
    for r in range(resumed['round'] if resumed else 0, rounds):
        optimizer = make_optimizer(model, lr, weight_decay, device)
        if resumed and resumed['round'] == r:  # the answers it kept before the kill, not new ones
            chosen, start = resumed['chosen'], resumed['iter_num']
            if resumed['optimizer'] is not None:
                optimizer.load_state_dict(resumed['optimizer'])
        else:  # K answers to each prompt, the best kept (and saved at once)
            prompts = prompts_to_answer(world, 'rl', n_prompts, r, prompt_file, enc,
                                        model.config.block_size, max_new_tokens)
            _, answers, scores = best_of(model, prompts=prompts[rank::world_size], n=k,
                                         **sampling, desc=f'round {r + 1}: {k} answers per prompt')
            chosen, start = all_gather(select_best(prompts[rank::world_size], answers, scores, k,
                                                   min_score)), 0
            n_unended = sum(all_gather([unended(scores, k)]))
            save_progress(path, model, inputs, **about, round=r, iter_num=0, chosen=chosen,
                          optimizer=None)
            if rank == 0:
                print(kept_line(r, chosen, len(prompts), n_unended, k, max_new_tokens, world))
        if not chosen:  # (said in kept_line: this round leaves the model as it was)
            continue
        # fine-tune on them: a checkpoint every ckpt_interval steps and after the last
        examples = answer_examples(enc, *zip(*chosen), model.config.block_size)
        for it in finetune(wrap(model.train(), device, compile), optimizer, examples, iters,
                           batch_size, lr, min_lr, warmup_iters, autocast, device, grad_clip,
                           seed + r, start, desc=f'round {r + 1}: fine-tuning'):
            if (ckpt_interval and it % ckpt_interval == 0) or it == iters:
                save_progress(path, model, inputs, **about, round=r, iter_num=it, chosen=chosen,
                              optimizer=optimizer.state_dict())
    # held-out prompts: the fine-tuned model's answers, its KL to SFT, and eval_k SFT answers each
    eval_prompts = prompts_to_answer(world, 'eval', n_eval, 0, eval_prompt_file, enc,
                                     model.config.block_size, max_new_tokens)[rank::world_size]
    tokens, answers, scores = best_of(model, prompts=eval_prompts, n=1, **sampling,
                                      desc='answering (fine-tuned)')
    kl = sampled_kl(model, sft_model, enc, eval_prompts, answers, autocast, device)
    tuned = all_gather(zip(eval_prompts, answers, scores, kl, map(len, tokens)))
    _, sft_answers, sft_scores = best_of(sft_model, prompts=eval_prompts, n=eval_k, **sampling,
                                         desc=f'answering {eval_k}x (SFT)')
    sampled = all_gather(zip(sft_answers, sft_scores))  # eval_k of each prompt, in its order
    if rank == 0:
        metrics = held_out_metrics(world, tuned, sampled, k, eval_k)
        save_checkpoint(path, model, **about, answers_sampled=rounds * n_prompts * k,
                        metrics=metrics, train_time=time.time() - t0)
        print(f'checkpoint {out_dir}/ckpt.pt ({time.time() - t0:.0f} s)')
    teardown()


if __name__ == '__main__':
    main()
