"""
Stage 3, RLHF with PPO (Schulman et al. 2017; Ziegler et al. 2019; Ouyang et al. 2022). New
prompts (the world's 'rl' set, never seen by stages 1-2); the policy, starting as the SFT model,
answers them; the frozen reward model scores each whole answer; that score, minus a KL penalty on
every token, is the reward, passed back token by token (each token a time step) by GAE; PPO
updates the policy and a value model. Reads out/sft and out/reward, writes out/rlhf/ckpt.pt.
With --advantage=grpo or rloo there is no value model: the policy answers each prompt group_size
times and each answer's advantage is its reward against the others' (critic-free, see below).

  python rlhf.py                      # round 1
  python rlhf.py --beta=0             # no KL penalty: watch the RM score rise and the gold score fall
  python reward.py --policy=out/rlhf --init_from=out/reward --rankings=out/reward/rankings.jsonl --out_dir=out/reward2
  python rlhf.py --init_from=out/rlhf --reward_model=out/reward2 --out_dir=out/rlhf2   # round 2
  python rlhf.py --advantage=rloo --out_dir=out/rloo   # critic-free: RLOO (or grpo), no value model
  python rlhf.py --init_from=out/real/sft --ref_from=out/real/sft --reward_model=out/real/reward --out_dir=out/real/rlhf \
      --prompt_file=out/real/data/hh_rlhf/prompts.jsonl --eval_prompt_file=out/real/data/hh_rlhf/eval_prompts.jsonl
                                      # a model of real data (run.sh's DATA=real): prompts from files, no gold

The four models, all with dropout off (the GPT has none):
  policy      trained; starts from init_from
  value       trained; a scalar head on a transformer, started from the reward model (as in
              InstructGPT): it already reads <prompt, answer> and knows what scores well
              (--advantage=gae only; grpo and rloo build none)
  reference   frozen SFT model: the KL penalty keeps the policy near it
  reward      frozen RM: its score at the answer's <|end|>, normalised to mean 0, std 1 over the
              SFT policy's first answers. An answer that never ends within max_new_tokens gets
              unfinished_reward instead (it has no <|end|> for the RM to score).
The gold judge scores the answers for the log only: no loss reads it. Run it again after a kill:
it goes on from its last checkpoint (every ckpt_interval iterations: policy, value model, both
optimizers, the reward normalisation, beta, the random state) as if never killed.

Critic-free advantages (grpo, rloo) keep the KL to the reference where PPO has it: in the reward,
-beta * (log pi - log pi_ref) summed over the answer's tokens and added to its score (InstructGPT's
objective, eq. 2, as RLOO's paper uses it), not as GRPO's k3 estimator in the loss. So the three
runs optimise the same objective with the same beta and differ only in the advantage estimator:
their gold-against-KL curves compare like with like, and it costs no extra forward pass.
"""
import copy
import json
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from data import tasks
from data.hh_rlhf import read_prompts
from model import (all_gather, all_mean, answer_text, configure, keep_metrics, load_checkpoint, load_tokenizer,
                   make_optimizer, prompt_tokens, raw_model, resumable, save_checkpoint, save_progress, setup, teardown)

# ----------------------------------------------------------------------------- config
init_from = 'out/sft'         # the policy starts here (round 2: out/rlhf)
ref_from = 'out/sft'          # the frozen reference of the KL penalty
reward_model = 'out/reward'   # the frozen RM (round 2: out/reward2)
out_dir = 'out/rlhf'
n_prompts = 1024              # the world's 'rl' prompts, cycled through
prompt_file = ''              # a model not trained on the world: its prompts, JSONL of {"prompt": "text"}
eval_prompt_file = ''         #   and its held-out ones (data/hh_rlhf.py's prompts.jsonl and eval_prompts.jsonl)
n_eval = 400                  # held-out prompts answered and judged every eval_interval iterations
eval_interval = 20
ckpt_interval = 10            # a checkpoint every this many iterations: a killed run, started again, goes on from it
iters = 80                    # PPO iterations: a rollout batch, then ppo_epochs over it
batch_size = 64               # rollouts per iteration per process
minibatch_size = 16
ppo_epochs = 2
advantage = 'gae'             # 'gae': PPO with a value model; 'grpo' or 'rloo': critic-free, group_size answers per prompt
group_size = 4                # grpo/rloo: each iteration answers batch_size / group_size prompts group_size times each
max_new_tokens = 128
temperature = 1.0             # sampling temperature; the log-probs divide the logits by it too
lr = 5e-5                     # policy
value_lr = 1e-4
beta = 0.15                   # KL penalty per token: reward -= beta * (log pi - log pi_ref)
kl_target = 0.0               # > 0: adapt beta toward this KL per answer (Ziegler et al. 2019, eq. 2); 0: fixed
gamma = 1.0                   # GAE discount (Schulman et al. 2016); 1: the reward at the end counts in full
lam = 0.95                    # GAE lambda
clip_range = 0.2              # PPO's epsilon for the ratio
value_clip = 0.2              # the value loss's clip around the old values
unfinished_reward = -2.0      # the (normalised) reward of an answer that never ends
ptx_coef = 0.0                # > 0: PPO-ptx, add ptx_coef x the pretraining loss (InstructGPT eq. 2)
ptx_data = 'out/data/world'   # PPO-ptx: pretraining tokens (data/prepare.py)
grad_clip = 1.0
# system
device = 'auto'
dtype = 'auto'
seed = 1337
# -----------------------------------------------------------------------------


def token_logprobs(model, idx, n_pad, P, with_entropy=False):
    """log pi(token) of each answer token (B, L) (and the entropy of pi there): the logits at the
    position before each token, divided by the sampling temperature, as when it was sampled."""
    logits = model(idx, n_pad=n_pad)[0][:, P - 1:-1].float() / temperature
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(2, idx[:, P:, None]).squeeze(2)
    return (logp, -(logp_all.exp() * logp_all).sum(-1)) if with_entropy else logp


def values_of(value, idx, n_pad, P):
    """V(state before each answer token) (B, L): the value head at the position before it."""
    return value(idx, n_pad=n_pad)[0][:, P - 1:-1]


def shaped_rewards(score, logp, ref_logp, mask, beta):
    """Per-token reward (Ouyang et al. 2022, eq. 2, as a sequence of steps): -beta * (log pi - log pi_ref)
    on every answer token, plus the whole answer's score on its last token; 0 on padding."""
    rewards = -beta * (logp - ref_logp) * mask
    last = mask.sum(1).long() - 1
    return rewards.scatter_add(1, last[:, None], score[:, None].to(rewards.dtype))


def gae(rewards, values, mask, gamma, lam):
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16), backwards over the answer:
    delta_t = r_t + gamma V_(t+1) - V_t, A_t = delta_t + gamma lam A_(t+1), with V = 0 after the last
    token. Returns (advantages, returns = advantages + values), 0 on padding."""
    values = values * mask
    advantages, next_adv = torch.zeros_like(rewards), torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        next_value = values[:, t + 1] if t + 1 < rewards.size(1) else torch.zeros_like(next_adv)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]
        advantages[:, t] = next_adv
    return advantages, (advantages + values) * mask


def grpo_advantages(rewards, group_size, eps=1e-6):
    """GRPO's outcome advantage (Shao et al. 2024, section 4.1.2): each answer's reward minus its
    group's mean, divided by the group's std (+eps: a group of equal rewards gets 0). rewards (B,):
    groups of group_size consecutive answers to one prompt. The same advantage goes on every token."""
    r = rewards.view(-1, group_size)
    return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + eps)).view(-1)


def rloo_advantages(rewards, group_size):
    """RLOO's advantage (Ahmadian et al. 2024, section 3.3; Kool et al. 2019): each answer's reward minus
    the mean reward of the other group_size - 1 answers to the same prompt (the leave-one-out baseline)."""
    r = rewards.view(-1, group_size)
    return (r - (r.sum(1, keepdim=True) - r) / (group_size - 1)).view(-1)


def group_advantages(score, kl, order, beta):
    """Critic-free advantages of a rollout's answers: the sequence reward score - beta * KL (the KL
    summed over the answer), against the other answers to the same prompt (grpo or rloo). Rows are
    sorted by answer length (row j answers prompt order[j]); the groups are consecutive prompts."""
    reward = torch.empty_like(score)
    reward[order] = score - beta * kl  # back in prompt order
    return (grpo_advantages if advantage == 'grpo' else rloo_advantages)(reward, group_size)[order]


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x, mask):
    """Zero mean, unit variance over the real tokens (advantage whitening)."""
    mean = masked_mean(x, mask)
    return (x - mean) * torch.rsqrt(masked_mean((x - mean) ** 2, mask) + 1e-8) * mask


def policy_loss(logp, old_logp, advantages, mask, clip_range):
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), negated to be minimised, and the share
    of tokens whose ratio was clipped."""
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip_range, 1 + clip_range) * advantages
    return -masked_mean(torch.min(unclipped, clipped), mask), masked_mean(((ratio - 1).abs() > clip_range).float(), mask)


def value_loss(values, old_values, returns, mask, value_clip):
    """Squared error to the returns, the pessimistic max of the plain and the clipped (within
    value_clip of the old values) prediction, as in OpenAI's PPO implementations."""
    clipped = old_values + (values - old_values).clamp(-value_clip, value_clip)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


@torch.no_grad()
def rollout(policy, ref, value, score_fn, prompts, end, autocast):
    """Answers to a batch of prompts (token lists) and all PPO needs of them. score_fn(idx, n_pad,
    last) -> one score per answer (the normalised RM score; tests pass synthetic ones). The old
    log-probs are computed in the minibatches of the first PPO epoch: before any update the ratio
    is exactly 1."""
    P = max(len(p) for p in prompts)
    with autocast:
        answers, lengths = raw_model(policy).generate(prompts, max_new_tokens, temperature, stop_token=int(end))
    order = torch.argsort(lengths, stable=True)  # shortest answers first: minibatches of similar lengths
    prompts, answers, lengths = [prompts[i] for i in order.tolist()], answers[order], lengths[order]
    L = int(lengths.max())
    n_pad = torch.tensor([P - len(p) for p in prompts], device=end.device)
    idx = torch.cat([torch.tensor([[0] * (P - len(p)) + p for p in prompts], device=end.device), answers[:, :L]], dim=1)
    mask = (torch.arange(L, device=end.device)[None] < lengths[:, None]).float()
    ended = answers.gather(1, (lengths - 1)[:, None]).squeeze(1) == end
    batch = dict(idx=idx, n_pad=n_pad, P=P, mask=mask, lengths=lengths, ended=ended, order=order)  # row j: prompt order[j]
    logp, ref_logp, values = (torch.zeros(len(prompts), L, device=end.device) for _ in range(3))
    scores = []
    for chunk in minibatches(batch, shuffle=False):
        i, n, Lc = idx[chunk], n_pad[chunk], int(lengths[chunk].max())  # (each minibatch cut to its longest answer)
        with autocast:
            logp[chunk, :Lc] = token_logprobs(raw_model(policy), i[:, :P + Lc], n, P)
            ref_logp[chunk, :Lc] = token_logprobs(ref, i[:, :P + Lc], n, P)
            if value is not None:  # (critic-free: no value model, values stay 0)
                values[chunk, :Lc] = values_of(raw_model(value), i[:, :P + Lc], n, P).float()
            scores.append(score_fn(i, n, P + lengths[chunk] - 1).float())
    score = torch.where(ended, torch.cat(scores), torch.full_like(torch.cat(scores), unfinished_reward))
    return dict(batch, logp=logp * mask, ref_logp=ref_logp * mask, values=values * mask, score=score)


def minibatches(batch, shuffle):
    """The rollout batch in runs of minibatch_size (it is sorted by answer length, so each run
    needs little padding); shuffle: in random order."""
    chunks = torch.arange(len(batch['mask']), device=batch['mask'].device).split(minibatch_size)
    return [chunks[i] for i in torch.randperm(len(chunks)).tolist()] if shuffle else chunks


def ppo_update(policy, value, opt_policy, opt_value, batch, beta, autocast, ptx_batch=None):
    """ppo_epochs over the rollout batch in minibatches: the clipped policy loss (plus PPO-ptx) and
    the clipped value loss, each model its own optimizer (value None: critic-free advantages, no
    value loss). Returns the statistics to log."""
    mask, P = batch['mask'], batch['P']
    if advantage == 'gae':
        rewards = shaped_rewards(batch['score'], batch['logp'], batch['ref_logp'], mask, beta)
        advantages, returns = gae(rewards, batch['values'], mask, gamma, lam)
        advantages = whiten(advantages, mask)
    else:  # critic-free: each answer's advantage on every one of its tokens
        kl = ((batch['logp'] - batch['ref_logp']) * mask).sum(1)
        advantages = group_advantages(batch['score'], kl, batch['order'], beta)[:, None] * mask
    stats = dict(policy_loss=[], clip_frac=[], entropy=[], **(dict(value_loss=[]) if value is not None else {}))
    for epoch in range(ppo_epochs):
        for chunk in minibatches(batch, shuffle=epoch > 0):  # (the first epoch: the chunks of the rollout)
            Lc = int(batch['lengths'][chunk].max())
            idx, n_pad, m = batch['idx'][chunk, :P + Lc], batch['n_pad'][chunk], mask[chunk, :Lc]
            with autocast:
                logp, entropy = token_logprobs(policy, idx, n_pad, P, with_entropy=True)
                loss, clip_frac = policy_loss(logp, batch['logp'][chunk, :Lc], advantages[chunk, :Lc], m, clip_range)
            loss.backward()
            if ptx_batch is not None:  # (a backward of its own: DDP averages each backward's gradients once)
                with autocast:
                    ptx_loss = ptx_coef * policy(*ptx_batch())[1]
                ptx_loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), grad_clip)
            opt_policy.step()
            opt_policy.zero_grad(set_to_none=True)
            for key, x in (('policy_loss', loss), ('clip_frac', clip_frac), ('entropy', masked_mean(entropy, m))):
                stats[key].append(x.detach())
            if value is None:
                continue
            with autocast:
                v_loss = value_loss(values_of(value, idx, n_pad, P).float(), batch['values'][chunk, :Lc],
                                    returns[chunk, :Lc], m, value_clip)
            v_loss.backward()
            torch.nn.utils.clip_grad_norm_(value.parameters(), grad_clip)
            opt_value.step()
            opt_value.zero_grad(set_to_none=True)
            stats['value_loss'].append(v_loss.detach())
    return {key: all_mean(torch.stack(xs).mean()) for key, xs in stats.items()}


def main():
    config = configure(globals())
    if advantage not in ('gae', 'grpo', 'rloo'):
        raise SystemExit(f"error: --advantage must be gae, grpo or rloo, got {advantage!r}")
    if eval_interval < 1 or ckpt_interval < 0:
        raise SystemExit(f'error: --eval_interval must be at least 1 (got {eval_interval}) and --ckpt_interval '
                         f'at least 0 (got {ckpt_interval}; 0: a checkpoint only at each evaluation)')
    if temperature <= 0:
        raise SystemExit(f'error: --temperature must be above 0, not {temperature}: PPO samples its answers, and its '
                         'log-probs are those of the sampling distribution (greedy decoding has none)')
    if advantage != 'gae' and (group_size < 2 or batch_size % group_size):
        raise SystemExit(f'error: --group_size must be at least 2 and divide --batch_size ({batch_size})')
    rank, world_size, dev, autocast = setup(device, dtype, seed)
    master = rank == 0
    policy, ckpt = load_checkpoint(os.path.join(init_from, 'ckpt.pt'), f'python {os.path.basename(init_from)}.py', dev,
                                   scalar_head=False)
    ref, _ = load_checkpoint(os.path.join(ref_from, 'ckpt.pt'), 'python sft.py', dev, scalar_head=False)
    rm, rm_ckpt = load_checkpoint(os.path.join(reward_model, 'ckpt.pt'), 'python reward.py', dev, scalar_head=True)
    value = copy.deepcopy(rm) if advantage == 'gae' else None  # the value model starts as the reward model
    for frozen in (ref, rm):
        frozen.eval().requires_grad_(False)
    enc = load_tokenizer(ckpt['tokenizer'])
    end = torch.tensor(enc.encode_single_token('<|end|>'), device=dev)
    data_dir = ckpt.get('data_dir', 'out/data/world')
    world = tasks.load_world(data_dir)  # None: a model of other data, with no gold judge; its prompts come from files
    if world is None and not (prompt_file and eval_prompt_file):
        raise SystemExit('error: the policy was not trained on the world: pass --prompt_file and --eval_prompt_file, '
                         'JSONL of {"prompt": "..."} (data/hh_rlhf.py writes them)')
    rl_prompts = (tasks.prompt_set(world, 'rl', n_prompts) if world
                  else read_prompts(prompt_file, n_prompts))[rank::world_size]
    eval_prompts = tasks.prompt_set(world, 'eval', n_eval) if world else read_prompts(eval_prompt_file, n_eval)
    ptx_batch = None
    if ptx_coef > 0:
        from pretrain import get_batch, load_tokens
        tokens, _ = load_tokens(ptx_data, 'train', policy.config.block_size)
        ptx_batch = lambda: get_batch(tokens, minibatch_size, policy.config.block_size,
                                      int(torch.randint(2**31, (1,))), dev)
    opt_policy = make_optimizer(policy, lr, 0.0, dev)
    opt_value = make_optimizer(value, value_lr, 0.0, dev) if value is not None else None
    trained_policy, trained_value = policy, value
    if dist.is_initialized():
        trained_policy, trained_value = (DDP(m, device_ids=[torch.device(dev).index] if dev.startswith('cuda') else None)
                                         if m is not None else None for m in (policy, value))

    # the RM's scores are normalised by their mean and std over the SFT policy's first rollouts
    norm = dict(mean=0.0, std=1.0)
    score_fn = lambda idx, n_pad, last: (rm(idx, n_pad=n_pad)[0].gather(1, last[:, None]).squeeze(1) - norm['mean']) / norm['std']

    @torch.no_grad()
    def evaluate(it):
        """Gold score, RM score and KL to the reference on the held-out prompts (each rank a share)."""
        mine = eval_prompts[rank::world_size]
        rows = []
        for i in range(0, len(mine), batch_size):
            batch = rollout(policy, ref, value, score_fn, [prompt_tokens(enc, p) for p in mine[i:i + batch_size]], end, autocast)
            kl = ((batch['logp'] - batch['ref_logp']) * batch['mask']).sum(1)
            for j, p in enumerate(mine[i + o] for o in batch['order'].tolist()):
                n = int(batch['lengths'][j])
                answer = answer_text(enc, batch['idx'][j, batch['P']:batch['P'] + n].tolist())
                rows.append((p, answer, float(batch['score'][j]), float(kl[j]), n))
        rows = all_gather(rows)
        row = dict(iter=it, rm_score=sum(r[2] for r in rows) / len(rows), kl=sum(r[3] for r in rows) / len(rows),
                   length=sum(r[4] for r in rows) / len(rows))
        summary = tasks.summarize(world, [r[0] for r in rows], [r[1] for r in rows]) if world else None
        if summary:
            row.update(gold=summary['gold'], gold_stderr=summary['gold_stderr'], kinds=summary['kinds'],
                       splits=summary['splits'], criteria=summary['criteria'])
        if master:
            tqdm.write(f'iter {it}: held-out RM score {row["rm_score"]:+.3f}, KL {row["kl"]:.2f}, length {row["length"]:.0f}'
                       + (', ' + tasks.report(summary) if summary else ''))
            log(kind='eval', **row)
            with open(os.path.join(out_dir, 'answers.jsonl'), 'w') as f:
                f.writelines(json.dumps(dict(prompt=p, answer=a, rm=s, gold=g)) + '\n'
                             for (p, a, s, _, _), g in zip(rows, summary['scores'] if summary else [None] * len(rows)))
        return row, summary

    def log(**row):
        with open(os.path.join(out_dir, 'metrics.jsonl'), 'a') as f:
            f.write(json.dumps(row) + '\n')

    def meta(it):  # what every checkpoint of the policy holds beside its weights
        return dict(config=config, tokenizer=ckpt['tokenizer'], stage='rlhf', data_dir=data_dir, iter_num=it,
                    rm_norm=norm, train_time=time.time() - t0, answers_sampled=it * batch_size * world_size)

    # a killed run of this command goes on from its last checkpoint
    inputs = [os.path.join(d, 'ckpt.pt') for d in (init_from, ref_from, reward_model)] + \
             [path for path in (prompt_file, eval_prompt_file) if path]
    resumed = resumable(out_dir, config, inputs, dev)
    start, kl_coef, t0 = 0, beta, time.time()
    if resumed:
        start, kl_coef, first, t0 = resumed['iter_num'], resumed['beta'], resumed['first'], t0 - resumed['train_time']
        policy.load_state_dict(resumed['model'])
        opt_policy.load_state_dict(resumed['opt_policy'])
        if value is not None:
            value.load_state_dict(resumed['value'])
            opt_value.load_state_dict(resumed['opt_value'])
        norm.update(resumed['rm_norm'])
    if master:
        os.makedirs(out_dir, exist_ok=True)
        keep_metrics(os.path.join(out_dir, 'metrics.jsonl'), start)
        if resumed:
            print(f'resuming at iteration {start}')
    if resumed and (start % eval_interval == 0 or start == iters):  # killed during that evaluation: again
        last, summary = evaluate(start)
    bar = tqdm(range(start, iters), initial=start, total=iters, desc='ppo' if advantage == 'gae' else f'ppo ({advantage})',
               disable=not master, dynamic_ncols=True)
    for it in bar:
        n = batch_size if advantage == 'gae' else batch_size // group_size  # critic-free: each prompt group_size times
        offset = it * n % len(rl_prompts)
        prompts = [p for p in (rl_prompts * 2)[offset:offset + n] for _ in range(1 if advantage == 'gae' else group_size)]
        batch = rollout(policy, ref, value, score_fn, [prompt_tokens(enc, p) for p in prompts], end, autocast)
        if it == 0:  # fix the normalisation on the first rollouts (all ranks), then score them again
            raw = torch.tensor(all_gather(batch['score'][batch['ended']].tolist()))
            if len(raw) >= 2:  # (else, with hardly an answer that ends, the raw scores as they are)
                norm.update(mean=raw.mean().item(), std=raw.std().item() + 1e-6)
            batch['score'] = torch.where(batch['ended'], (batch['score'] - norm['mean']) / norm['std'], batch['score'])
            first, _ = evaluate(0)
        stats = ppo_update(trained_policy, trained_value, opt_policy, opt_value, batch, kl_coef, autocast, ptx_batch)
        kl = all_mean(((batch['logp'] - batch['ref_logp']) * batch['mask']).sum(1).mean())
        answers = [answer_text(enc, batch['idx'][j, batch['P']:batch['P'] + int(n)].tolist()) for j, n in enumerate(batch['lengths'])]
        gold = all_mean(sum(tasks.score(world, prompts[o], a)[0] for o, a in zip(batch['order'].tolist(), answers))
                        / len(prompts)) if world else None  # the log only
        row = dict(iter=it, rm_score=all_mean(batch['score'].mean()), kl=kl, beta=kl_coef, gold=gold,
                   length=all_mean(batch['lengths'].float().mean()), ended=all_mean(batch['ended'].float().mean()), **stats)
        if kl_target > 0:  # beta *= 1 + K e, e = KL / target - 1 clipped to +-0.2, K = 0.1 (Ziegler et al. 2019, eq. 2)
            kl_coef *= 1 + 0.1 * max(-0.2, min(0.2, kl / kl_target - 1))
        if master:
            log(kind='train', **row)
            bar.set_postfix(rm=f'{row["rm_score"]:+.2f}', kl=f'{kl:.2f}', gold='-' if gold is None else f'{gold:.2f}')
        evaluating = (it + 1) % eval_interval == 0 or it + 1 == iters
        if evaluating or (ckpt_interval and (it + 1) % ckpt_interval == 0):  # (saved before the long evaluation)
            save_progress(os.path.join(out_dir, 'ckpt.pt'), policy, inputs, **meta(it + 1), first=first, beta=kl_coef,
                          value=value and value.state_dict(), opt_policy=opt_policy.state_dict(),
                          opt_value=opt_value and opt_value.state_dict())  # (what a killed run needs to go on)
        if evaluating:
            last, summary = evaluate(it + 1)
    if master:
        save_checkpoint(os.path.join(out_dir, 'ckpt.pt'), policy, **meta(iters), metrics=last)
        gold = f'gold score {first["gold"]:.3f} -> {last["gold"]:.3f} ({last["gold"] - first["gold"]:+.3f}), ' if world else ''
        print(f'held-out {gold}RM score {first["rm_score"]:+.3f} -> {last["rm_score"]:+.3f}, KL to SFT {last["kl"]:.2f} '
              f'nats per answer\n' + (tasks.report(summary) + '\n' if summary else '')
              + f'checkpoint {out_dir}/ckpt.pt ({time.time() - t0:.0f} s)')
    teardown()


if __name__ == '__main__':
    main()
