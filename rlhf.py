"""Stage 3, RLHF with PPO (Schulman et al. 2017; Ouyang et al. 2022): the policy (from SFT) learns
to raise the frozen reward model's score minus a KL penalty to the frozen reference, with a value
model (from the RM) and GAE. --advantage=rloo or grpo: no value model, each prompt answered
group_size times, the KL still in the reward (not GRPO's k3 in the loss). README.md explains more.

  python rlhf.py                      # reads out/sft and out/reward, writes out/rlhf/ckpt.pt
  python rlhf.py --beta=0             # no KL penalty: the RM score rises and the gold score falls
  python rlhf.py --init_from=out/rlhf --reward_model=out/reward2 --out_dir=out/rlhf2  # round 2
  python rlhf.py --advantage=rloo --out_dir=out/rloo   # critic-free: RLOO (or grpo)

Real prompts as they come: one leaving no room for max_new_tokens in the context is dropped and
counted (model.fitting); an answer that does not end within max_new_tokens gets unfinished_reward.
"""
import copy
import os
import time
from functools import partial

import torch
from tqdm import tqdm

from data import formats, prepare, tasks
from data.hh_rlhf import read_prompts
from model import (all_gather, all_mean, answer_text, configure, fitting, keep_metrics,
                   load_checkpoint, load_tokenizer, log_row, make_optimizer, prompt_tokens,
                   rank_and_size, raw_model, resumable, save_checkpoint, save_progress, setup,
                   teardown, token_logprobs, wrap)

# ----------------------------------------------------------------------------- config
init_from = 'out/sft'         # the policy starts here (round 2: out/rlhf)
ref_from = 'out/sft'          # the frozen reference of the KL penalty
reward_model = 'out/reward'   # the frozen RM (round 2: out/reward2)
out_dir = 'out/rlhf'
n_prompts = 1024              # the world's 'rl' prompts, cycled through
prompt_file = ''              # not a model of the world: its prompts, JSONL of {"prompt": "text"}
eval_prompt_file = ''         #   and its held-out ones (data/hh_rlhf.py writes both)
n_eval = 400                  # held-out prompts answered and judged every eval_interval iterations
eval_interval = 20
ckpt_interval = 10            # a checkpoint every this many iterations (0: at evaluations only)
iters = 80                    # PPO iterations: a rollout batch, then ppo_epochs over it
batch_size = 64               # rollouts per iteration per process
minibatch_size = 16
ppo_epochs = 2
advantage = 'gae'             # 'gae': PPO with a value model; 'grpo' or 'rloo': critic-free
group_size = 4                # grpo/rloo: batch_size / group_size prompts, group_size answers each
max_new_tokens = 128
temperature = 1.0             # sampling temperature; the log-probs divide the logits by it too
lr = 5e-5                     # policy
value_lr = 1e-4
beta = 0.15                   # KL penalty per token: reward -= beta * (log pi - log pi_ref)
kl_target = 0.0               # > 0: adapt beta toward this KL per answer (Ziegler et al. 2019)
gamma = 1.0                   # GAE discount (Schulman et al. 2016)
lam = 0.95                    # GAE lambda
clip_range = 0.2              # PPO's epsilon for the ratio
value_clip = 0.2              # the value loss's clip around the old values
unfinished_reward = -2.0      # the (normalised) reward of an answer that never ends
ptx_coef = 0.0                # > 0: PPO-ptx, add ptx_coef x the pretraining loss (InstructGPT)
ptx_data = 'out/data/world'   # PPO-ptx: pretraining tokens (data/prepare.py)
grad_clip = 1.0
# system
device = 'auto'
dtype = 'auto'
seed = 1337
# -----------------------------------------------------------------------------
PPO_KEYS = ('batch_size', 'minibatch_size', 'ppo_epochs', 'advantage', 'group_size',
            'max_new_tokens', 'temperature', 'gamma', 'lam', 'clip_range', 'value_clip',
            'unfinished_reward', 'ptx_coef', 'grad_clip')  # rollout's and ppo_update's: dict hp




def shaped_rewards(score, logp, ref_logp, mask, beta):
    """Per-token reward (Ouyang et al. 2022, eq. 2, as a sequence of steps): -beta * (log pi -
    log pi_ref) on every answer token, plus the answer's score on its last token; 0 on padding."""
    rewards = -beta * (logp - ref_logp) * mask
    last = mask.sum(1).long() - 1
    return rewards.scatter_add(1, last[:, None], score[:, None].to(rewards.dtype))


def gae(rewards, values, mask, gamma, lam):
    """GAE (Schulman et al. 2016, eq. 16), backwards: delta_t = r_t + gamma V_(t+1) - V_t, A_t =
    delta_t + gamma lam A_(t+1), V = 0 after the last token. (A, returns A + V), 0 on padding."""
    values = values * mask
    advantages, next_adv = torch.zeros_like(rewards), torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        next_value = values[:, t + 1] if t + 1 < rewards.size(1) else torch.zeros_like(next_adv)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]
        advantages[:, t] = next_adv
    return advantages, (advantages + values) * mask


def grpo_advantages(rewards, group_size, eps=1e-6):
    """GRPO's outcome advantage (Shao et al. 2024, section 4.1.2): each reward minus its group's
    mean, over the group's std (+eps: equal rewards get 0); a group: group_size consecutive rows."""
    r = rewards.view(-1, group_size)
    return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + eps)).view(-1)


def rloo_advantages(rewards, group_size):
    """RLOO's advantage (Ahmadian et al. 2024, section 3.3; Kool et al. 2019): each reward minus
    the mean reward of the other group_size - 1 answers to the prompt (leave-one-out baseline)."""
    r = rewards.view(-1, group_size)
    return (r - (r.sum(1, keepdim=True) - r) / (group_size - 1)).view(-1)


def group_advantages(score, kl, order, beta, advantage, group_size):
    """Critic-free advantages ('grpo' or 'rloo') of the rewards score - beta * KL, the groups taken
    in prompt order (rows are sorted by answer length: row j answers prompt order[j])."""
    reward = torch.empty_like(score)
    reward[order] = score - beta * kl
    estimator = grpo_advantages if advantage == 'grpo' else rloo_advantages
    return estimator(reward, group_size)[order]


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x, mask):
    """Zero mean, unit variance over the real tokens (advantage whitening)."""
    mean = masked_mean(x, mask)
    return (x - mean) * torch.rsqrt(masked_mean((x - mean) ** 2, mask) + 1e-8) * mask


def policy_loss(logp, old_logp, advantages, mask, clip_range):
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), negated, and the share clipped."""
    ratio = torch.exp(logp - old_logp)
    clipped = ratio.clamp(1 - clip_range, 1 + clip_range) * advantages
    clip_frac = masked_mean(((ratio - 1).abs() > clip_range).float(), mask)
    return -masked_mean(torch.min(ratio * advantages, clipped), mask), clip_frac


def value_loss(values, old_values, returns, mask, value_clip):
    """Squared error to the returns, the larger of the plain and the clipped (within value_clip of
    the old values) prediction's, as in OpenAI's PPO implementations."""
    clipped = old_values + (values - old_values).clamp(-value_clip, value_clip)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


def answer_logprobs(model, idx, n_pad, P, temperature, with_entropy=False):
    """log pi (B, L) of the answer tokens (from column P), the logits over the sampling temperature
    as when they were sampled; with_entropy: and the entropy of pi there."""
    logits = model(idx, n_pad=n_pad)[0][:, P - 1:-1].float() / temperature
    logp = token_logprobs(logits, idx[:, P:])
    if not with_entropy:
        return logp
    logp_all = logits.log_softmax(-1)
    return logp, -(logp_all.exp() * logp_all).sum(-1)


def values_of(value, idx, n_pad, P):
    """V(state before each answer token) (B, L): the value head at the position before it."""
    return value(idx, n_pad=n_pad)[0][:, P - 1:-1]


def rm_score(rm, norm, idx, n_pad, last):
    """The RM's score at position last of each row, normalised by norm (mean, std)."""
    score = rm(idx, n_pad=n_pad)[0].gather(1, last[:, None]).squeeze(1)
    return (score - norm['mean']) / norm['std']


def minibatches(batch, minibatch_size, shuffle):
    """The rows in runs of minibatch_size (of similar answer lengths); shuffle: in random order."""
    chunks = torch.arange(len(batch['mask']), device=batch['mask'].device).split(minibatch_size)
    return [chunks[i] for i in torch.randperm(len(chunks)).tolist()] if shuffle else chunks


@torch.no_grad()
def rollout(policy, ref, value, score_fn, prompts, end, autocast, hp):
    """Answers to prompts (token lists), scored by score_fn(idx, n_pad, last), and all PPO needs of
    them; the old log-probs in the first PPO epoch's minibatches: there the ratio is exactly 1."""
    P, device = max(len(p) for p in prompts), end.device
    with autocast:
        answers, lengths = raw_model(policy).generate(prompts, hp['max_new_tokens'],
                                                      hp['temperature'], stop_token=int(end))
    order = torch.argsort(lengths, stable=True)  # shortest first: minibatches of similar lengths
    prompts, answers, lengths = [prompts[i] for i in order.tolist()], answers[order], lengths[order]
    L, n_pad = int(lengths.max()), torch.tensor([P - len(p) for p in prompts], device=device)
    padded = torch.tensor([[0] * (P - len(p)) + p for p in prompts], device=device)
    idx = torch.cat([padded, answers[:, :L]], dim=1)
    mask = (torch.arange(L, device=device)[None] < lengths[:, None]).float()
    ended = answers.gather(1, (lengths - 1)[:, None]).squeeze(1) == end
    batch = dict(idx=idx, n_pad=n_pad, P=P, mask=mask, lengths=lengths, ended=ended, order=order)
    logp, ref_logp, values = (torch.zeros(len(prompts), L, device=device) for _ in range(3))
    score = torch.zeros(len(prompts), device=device)
    for chunk in minibatches(batch, hp['minibatch_size'], shuffle=False):
        Lc = int(lengths[chunk].max())  # (each minibatch cut to its longest answer)
        i, n = idx[chunk, :P + Lc], n_pad[chunk]
        with autocast:
            logp[chunk, :Lc] = answer_logprobs(raw_model(policy), i, n, P, hp['temperature'])
            ref_logp[chunk, :Lc] = answer_logprobs(ref, i, n, P, hp['temperature'])
            if value is not None:  # (critic-free: no value model, values stay 0)
                values[chunk, :Lc] = values_of(raw_model(value), i, n, P).float()
            score[chunk] = score_fn(idx[chunk], n, P + lengths[chunk] - 1).float()
    return dict(batch, logp=logp * mask, ref_logp=ref_logp * mask, values=values * mask,
                kl=((logp - ref_logp) * mask).sum(1),  # (log pi - log pi_ref of each answer)
                score=torch.where(ended, score, hp['unfinished_reward']))


def ppo_update(policy, value, opt_policy, opt_value, batch, beta, autocast, hp, ptx_tokens=None):
    """hp['ppo_epochs'] over the rollouts in minibatches: the clipped policy loss (+ PPO-ptx on
    ptx_tokens) and value loss (value None: critic-free). Returns the statistics to log."""
    mask, P = batch['mask'], batch['P']
    if hp['advantage'] == 'gae':
        rewards = shaped_rewards(batch['score'], batch['logp'], batch['ref_logp'], mask, beta)
        advantages, returns = gae(rewards, batch['values'], mask, hp['gamma'], hp['lam'])
        advantages = whiten(advantages, mask)
    else:  # critic-free: each answer's advantage on every one of its tokens
        advantages = group_advantages(batch['score'], batch['kl'], batch['order'], beta,
                                      hp['advantage'], hp['group_size'])[:, None] * mask
    stats = dict(policy_loss=[], clip_frac=[], entropy=[], value_loss=[])
    for epoch in range(hp['ppo_epochs']):  # (the first epoch: the chunks of the rollout)
        for chunk in minibatches(batch, hp['minibatch_size'], shuffle=epoch > 0):
            Lc = int(batch['lengths'][chunk].max())
            idx, n_pad, m = batch['idx'][chunk, :P + Lc], batch['n_pad'][chunk], mask[chunk, :Lc]
            with autocast:
                logp, entropy = answer_logprobs(policy, idx, n_pad, P, hp['temperature'], True)
                loss, clip_frac = policy_loss(logp, batch['logp'][chunk, :Lc],
                                              advantages[chunk, :Lc], m, hp['clip_range'])
            loss.backward()
            if ptx_tokens is not None:  # (its own backward: DDP averages each backward once)
                x, y = prepare.get_batch(ptx_tokens, hp['minibatch_size'],
                                         raw_model(policy).config.block_size,
                                         int(torch.randint(2**31, (1,))), str(idx.device))
                with autocast:
                    ptx_loss = hp['ptx_coef'] * policy(x, y)[1]
                ptx_loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), hp['grad_clip'])
            opt_policy.step()
            opt_policy.zero_grad(set_to_none=True)
            stats['policy_loss'].append(loss.detach())
            stats['clip_frac'].append(clip_frac.detach())
            stats['entropy'].append(masked_mean(entropy, m).detach())
            if value is not None:  # (critic-free: no value loss)
                with autocast:
                    v_loss = value_loss(values_of(value, idx, n_pad, P).float(),
                                        batch['values'][chunk, :Lc], returns[chunk, :Lc], m,
                                        hp['value_clip'])
                v_loss.backward()
                torch.nn.utils.clip_grad_norm_(value.parameters(), hp['grad_clip'])
                opt_value.step()
                opt_value.zero_grad(set_to_none=True)
                stats['value_loss'].append(v_loss.detach())
    return {key: all_mean(torch.stack(xs).mean()) for key, xs in stats.items() if xs}


def answer_texts(enc, batch):
    """The answers of a rollout batch as text, in its rows' order."""
    return [answer_text(enc, batch['idx'][j, batch['P']:batch['P'] + int(n)].tolist())
            for j, n in enumerate(batch['lengths'])]


@torch.no_grad()
def evaluate_held_out(it, models, score_fn, enc, prompts, end, autocast, hp, world, out_dir):
    """RM score, KL, length and gold score on the held-out prompts (each rank a share): printed,
    logged, answers.jsonl written. Returns (the metrics row, the gold summary or None)."""
    rank, world_size = rank_and_size()
    (policy, ref, _), mine, rows = models, prompts[rank::world_size], []
    for i in range(0, len(mine), hp['batch_size']):
        tokens = [prompt_tokens(enc, p) for p in mine[i:i + hp['batch_size']]]
        batch = rollout(policy, ref, None, score_fn, tokens, end, autocast, hp)  # (no values read)
        rows += zip([mine[i + o] for o in batch['order'].tolist()], answer_texts(enc, batch),
                    batch['score'].tolist(), batch['kl'].tolist(), batch['lengths'].tolist())
    prompts, answers, scores, kls, lengths = zip(*all_gather(rows))
    summary = tasks.summarize(world, prompts, answers) if world else None
    row = dict(iter=it, rm_score=sum(scores) / len(scores), kl=sum(kls) / len(kls),
               length=sum(lengths) / len(lengths), **(tasks.gold_fields(summary) if world else {}))
    if rank == 0:
        gold = ', ' + tasks.report(summary) if world else ''
        tqdm.write(f'iter {it}: held-out RM score {row["rm_score"]:+.3f}, KL {row["kl"]:.2f}, '
                   f'length {row["length"]:.0f}{gold}')
        log_row(os.path.join(out_dir, 'metrics.jsonl'), dict(kind='eval', **row))
        judged = zip(prompts, answers, scores, summary['scores'] if world else [None] * len(scores))
        formats.write_jsonl(os.path.join(out_dir, 'answers.jsonl'),
                            [dict(prompt=p, answer=a, rm=s, gold=g) for p, a, s, g in judged])
    return row, summary


def check_config(advantage, eval_interval, ckpt_interval, temperature, group_size, batch_size, **_):
    """Exits with a one-line error where the config is wrong."""
    if advantage not in ('gae', 'grpo', 'rloo'):
        raise SystemExit(f'error: --advantage must be gae, grpo or rloo, got {advantage!r}')
    if eval_interval < 1 or ckpt_interval < 0:
        raise SystemExit(f'error: --eval_interval must be at least 1 (got {eval_interval}) and '
                         f'--ckpt_interval at least 0 (got {ckpt_interval}; 0: a checkpoint only '
                         'at each evaluation)')
    if temperature <= 0:
        raise SystemExit(f'error: --temperature must be above 0, not {temperature}: PPO samples '
                         'its answers, and its log-probs are those of the sampling distribution '
                         '(greedy decoding has none)')
    if advantage != 'gae' and (group_size < 2 or batch_size % group_size):
        raise SystemExit('error: --group_size must be at least 2 and divide --batch_size '
                         f'({batch_size})')


def load_prompts(world, prompt_file, eval_prompt_file, n_prompts, n_eval, enc, block_size, room):
    """(the 'rl' prompts, the held-out ones): the world's, or without one the prompt files'; those
    leaving room tokens for the answer in block_size (model.fitting drops the others, counted)."""
    if world:
        sets = (tasks.prompt_set(world, 'rl', n_prompts), 'rl prompts', n_prompts), \
               (tasks.prompt_set(world, 'eval', n_eval), 'eval prompts', n_eval)
    elif not (prompt_file and eval_prompt_file):
        raise SystemExit('error: the policy was not trained on the world: pass --prompt_file and '
                         '--eval_prompt_file, JSONL of {"prompt": "..."} (data/hh_rlhf.py writes '
                         'them)')
    else:
        sets = (read_prompts(prompt_file), prompt_file, n_prompts), \
               (read_prompts(eval_prompt_file), eval_prompt_file, n_eval)
    return tuple(fitting(enc, pool, block_size, room, where)[:n or None] for pool, where, n in sets)


def prompts_of(it, prompts, n, repeats):
    """The n prompts of iteration it, cycling through prompts, each repeated repeats times."""
    offset = it * n % len(prompts)
    return [p for p in (prompts * 2)[offset:offset + n] for _ in range(repeats)]


def adaptive_beta(beta, kl, kl_target):
    """Ziegler et al. 2019, eq. 2: beta *= 1 + 0.1 e, e = KL / kl_target - 1 clipped to +-0.2."""
    return beta * (1 + 0.1 * max(-0.2, min(0.2, kl / kl_target - 1)))


def train_row(it, batch, prompts, enc, world, beta, stats):
    """One iteration's metrics, averaged over the ranks (the gold score: for the log only)."""
    pairs = zip(batch['order'].tolist(), answer_texts(enc, batch))
    gold = all_mean(sum(tasks.score(world, prompts[o], a)[0] for o, a in pairs) / len(prompts)) \
        if world else None
    return dict(iter=it, rm_score=all_mean(batch['score'].mean()), kl=all_mean(batch['kl'].mean()),
                beta=beta, gold=gold, length=all_mean(batch['lengths'].float().mean()),
                ended=all_mean(batch['ended'].float().mean()), **stats)


def fit_normalisation(norm, score, ended):
    """Sets norm to the mean and std of the raw scores of the answers that ended (all ranks'; with
    fewer than 2 it stays mean 0, std 1) and returns score normalised by it."""
    raw = torch.tensor(all_gather(score[ended].tolist()))
    if len(raw) >= 2:
        norm.update(mean=raw.mean().item(), std=raw.std().item() + 1e-6)
    return torch.where(ended, (score - norm['mean']) / norm['std'], score)


def restore(resumed, policy, opt_policy, value, opt_value, norm):
    """Loads a killed run's state (resumable) into the models, the optimizers and norm, says so;
    returns (its iteration, beta, first held-out metrics, start time)."""
    if rank_and_size()[0] == 0:
        print(f'resuming at iteration {resumed["iter_num"]}')
    for state, key in ((policy, 'model'), (opt_policy, 'opt_policy'), (value, 'value'),
                       (opt_value, 'opt_value')):
        if state is not None:
            state.load_state_dict(resumed[key])
    norm.update(resumed['rm_norm'])
    t0 = time.time() - resumed['train_time']
    return resumed['iter_num'], resumed['beta'], resumed['first'], t0


def progress(it, t0, answers_per_iter):
    """What a checkpoint at iteration it holds of the run's progress."""
    return dict(iter_num=it, train_time=time.time() - t0, answers_sampled=it * answers_per_iter)


def main():
    config = configure(globals())
    check_config(**config)
    rank, world_size, device, autocast = setup(config['device'], dtype, seed)
    # the four models (the reference and the RM frozen, the value model from the RM), the prompts
    critic = advantage == 'gae'
    policy, ckpt = load_checkpoint(os.path.join(init_from, 'ckpt.pt'),
                                   f'python {os.path.basename(init_from)}.py', device, False)
    ref, _ = load_checkpoint(os.path.join(ref_from, 'ckpt.pt'), 'python sft.py', device, False)
    rm, _ = load_checkpoint(os.path.join(reward_model, 'ckpt.pt'), 'python reward.py', device, True)
    value = copy.deepcopy(rm) if critic else None
    ref.eval().requires_grad_(False)
    rm.eval().requires_grad_(False)
    enc = load_tokenizer(ckpt['tokenizer'])
    end = torch.tensor(enc.encode_single_token('<|end|>'), device=device)
    data_dir = ckpt.get('data_dir', 'out/data/world')
    world = tasks.load_world(data_dir)
    rl_prompts, eval_prompts = load_prompts(world, prompt_file, eval_prompt_file, n_prompts, n_eval,
                                            enc, policy.config.block_size, max_new_tokens)
    ptx_tokens = (prepare.load_tokens(ptx_data, 'train', policy.config.block_size)[0]
                  if ptx_coef > 0 else None)
    opt_policy = make_optimizer(policy, lr, 0.0, device)
    opt_value = make_optimizer(value, value_lr, 0.0, device) if critic else None
    trained_policy, trained_value = wrap(policy, device), wrap(value, device) if critic else None
    # the RM's scores are normalised by their mean and std over the SFT policy's first rollouts
    norm, hp = dict(mean=0.0, std=1.0), {key: config[key] for key in PPO_KEYS}
    models, score_fn = (policy, ref, value), partial(rm_score, rm, norm)
    held_out = (score_fn, enc, eval_prompts, end, autocast, hp, world, out_dir)
    saved = dict(config=config, tokenizer=ckpt['tokenizer'], stage='rlhf', data_dir=data_dir,
                 rm_norm=norm)
    # a killed run of this command goes on from its last checkpoint
    inputs = [os.path.join(d, 'ckpt.pt') for d in (init_from, ref_from, reward_model)] + \
             [path for path in (prompt_file, eval_prompt_file) if path]
    resumed = resumable(out_dir, config, inputs, device)
    start, kl_coef, t0 = 0, beta, time.time()
    if resumed:
        start, kl_coef, first, t0 = restore(resumed, policy, opt_policy, value, opt_value, norm)
    if rank == 0:
        os.makedirs(out_dir, exist_ok=True)
        keep_metrics(os.path.join(out_dir, 'metrics.jsonl'), start)
    if resumed and (start % eval_interval == 0 or start == iters):  # killed during that evaluation
        last, summary = evaluate_held_out(start, models, *held_out)
    repeats = 1 if critic else group_size  # critic-free: each prompt group_size times
    bar = tqdm(range(start, iters), initial=start, total=iters, dynamic_ncols=True,
               disable=rank != 0, desc='ppo' if critic else f'ppo ({advantage})')
    for it in bar:
        # answer this iteration's prompts (this rank's share)
        prompts = prompts_of(it, rl_prompts[rank::world_size], batch_size // repeats, repeats)
        batch = rollout(*models, score_fn, [prompt_tokens(enc, p) for p in prompts], end, autocast,
                        hp)
        if it == 0:  # fix the normalisation on the first rollouts (all ranks), score them again
            batch['score'] = fit_normalisation(norm, batch['score'], batch['ended'])
            first, _ = evaluate_held_out(0, models, *held_out)
        # PPO epochs over the rollouts, then log
        stats = ppo_update(trained_policy, trained_value, opt_policy, opt_value, batch, kl_coef,
                           autocast, hp, ptx_tokens)
        row = train_row(it, batch, prompts, enc, world, kl_coef, stats)
        kl_coef = adaptive_beta(kl_coef, row['kl'], kl_target) if kl_target > 0 else kl_coef
        log_row(os.path.join(out_dir, 'metrics.jsonl'), dict(kind='train', **row))
        bar.set_postfix(rm=f'{row["rm_score"]:+.2f}', kl=f'{row["kl"]:.2f}',
                        gold='-' if row['gold'] is None else f'{row["gold"]:.2f}')
        # checkpoint (before the long evaluation), then evaluate
        evaluating = (it + 1) % eval_interval == 0 or it + 1 == iters
        if evaluating or (ckpt_interval and (it + 1) % ckpt_interval == 0):
            save_progress(os.path.join(out_dir, 'ckpt.pt'), policy, inputs, **saved, first=first,
                          **progress(it + 1, t0, batch_size * world_size), beta=kl_coef,
                          value=value and value.state_dict(), opt_policy=opt_policy.state_dict(),
                          opt_value=opt_value and opt_value.state_dict())
        if evaluating:
            last, summary = evaluate_held_out(it + 1, models, *held_out)
    if rank == 0:
        save_checkpoint(os.path.join(out_dir, 'ckpt.pt'), policy, **saved, metrics=last,
                        **progress(iters, t0, batch_size * world_size))
        gold = (f'gold score {first["gold"]:.3f} -> {last["gold"]:.3f} '
                f'({last["gold"] - first["gold"]:+.3f}), ') if world else ''
        report = tasks.report(summary) + '\n' if summary else ''
        print(f'held-out {gold}RM score {first["rm_score"]:+.3f} -> {last["rm_score"]:+.3f}, KL to '
              f'SFT {last["kl"]:.2f} nats per answer\n{report}checkpoint {out_dir}/ckpt.pt '
              f'({time.time() - t0:.0f} s)')
    teardown()


if __name__ == '__main__':
    main()
