import json
import math

import pytest
import torch
import torch.nn.functional as F
from contextlib import nullcontext

import rlhf
from conftest import run_script
from model import GPT, GPTConfig, make_optimizer

VOCAB, END, TARGET = 64, 63, 7


def tiny(seed, scalar_head=False):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=VOCAB, block_size=48, n_layer=1, n_head=2, n_embd=32, scalar_head=scalar_head))


PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11], [12, 13, 14, 15, 16]] * 2  # different lengths: padding


def hyperparameters(**changes):
    """rlhf's defaults of rollout's and ppo_update's hyperparameters, with changes."""
    return {key: getattr(rlhf, key) for key in rlhf.PPO_KEYS} | changes


def test_before_any_update_ratio_is_one_and_kl_to_an_identical_reference_is_zero():
    hp = hyperparameters(minibatch_size=4, max_new_tokens=12, temperature=0.7)
    policy, value = tiny(0), tiny(1, scalar_head=True)
    ref = tiny(0)  # the same weights
    batch = rlhf.rollout(policy, ref, value, lambda idx, n_pad, last: torch.zeros(len(idx)), PROMPTS,
                         torch.tensor(END), nullcontext(), hp)
    assert torch.equal(batch['logp'], batch['ref_logp'])  # KL exactly 0
    first = torch.arange(4)  # the first minibatch of the first epoch, as ppo_update takes it
    new = rlhf.answer_logprobs(policy, batch['idx'][first], batch['n_pad'][first], batch['P'], 0.7)
    assert torch.equal(torch.exp(new - batch['logp'][first]), torch.ones_like(new))  # ratio exactly 1
    # and the log-probs are those of the sampling distribution: each row alone, unpadded, at temperature 0.7
    for b, prompt in enumerate(PROMPTS[o] for o in batch['order'].tolist()):  # (rows sorted by answer length)
        n = int(batch['lengths'][b])
        answer = batch['idx'][b, batch['P']:batch['P'] + n]
        alone = torch.tensor([prompt + answer.tolist()])
        logits = policy(alone)[0][0, len(prompt) - 1:-1] / 0.7
        expected = F.log_softmax(logits, -1).gather(1, answer[:, None]).squeeze(1)
        torch.testing.assert_close(batch['logp'][b, :n], expected, atol=1e-5, rtol=1e-5)
        assert batch['mask'][b].sum() == n


def test_shaped_rewards_put_the_score_on_the_last_real_token_and_the_penalty_on_every_one():
    logp = torch.tensor([[-1.0, -2.0, -3.0, -4.0], [-1.0, -1.0, -1.0, -1.0]])
    ref_logp = torch.tensor([[-1.5, -1.0, -3.0, -9.0], [-2.0, -2.0, -2.0, -2.0]])
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 0, 0, 0]])
    rewards = rlhf.shaped_rewards(torch.tensor([10.0, -5.0]), logp, ref_logp, mask, beta=0.1)
    expected = torch.tensor([[-0.1 * 0.5, -0.1 * -1.0, 10.0, 0.0], [-5.0 - 0.1 * 1.0, 0, 0, 0]])
    torch.testing.assert_close(rewards, expected)


def test_gae_and_returns_by_hand():
    rewards = torch.tensor([[0.0, 1.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 1.0, 1.5, 9.0]])  # the last is padding: must not leak in
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    gamma, lam = 0.9, 0.8
    d2 = 2.0 + gamma * 0.0 - 1.5  # the last real step: V after it is 0
    d1 = 1.0 + gamma * 1.5 - 1.0
    d0 = 0.0 + gamma * 1.0 - 0.5
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    advantages, returns = rlhf.gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(advantages, torch.tensor([[a0, a1, a2, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[a0 + 0.5, a1 + 1.0, a2 + 1.5, 0.0]]))
    # gamma = lam = 1: every advantage is the sum of the rewards to come minus the value
    advantages, _ = rlhf.gae(rewards, values, mask, 1.0, 1.0)
    torch.testing.assert_close(advantages, torch.tensor([[3.0 - 0.5, 3.0 - 1.0, 2.0 - 1.5, 0.0]]))


def test_clipped_objective_by_hand():
    old = torch.zeros(1, 4)
    ratios = torch.tensor([[0.5, 1.1, 1.5, 1.5]])
    advantages = torch.tensor([[1.0, 1.0, 1.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, clip_frac = rlhf.policy_loss(torch.log(ratios), old, advantages, mask, clip_range=0.2)
    # min(r A, clip(r) A): 0.5 (below the range, A > 0: unclipped is smaller), 1.1 (inside),
    # 1.2 (above, A > 0: clipped), -1.5 (above, A < 0: unclipped is smaller)
    assert loss.item() == pytest.approx(-(0.5 + 1.1 + 1.2 - 1.5) / 4)
    assert clip_frac.item() == pytest.approx(3 / 4)
    v_loss = rlhf.value_loss(torch.tensor([[2.0]]), torch.tensor([[1.0]]), torch.tensor([[1.5]]), torch.ones(1, 1), 0.2)
    assert v_loss.item() == pytest.approx(0.5 * max((2.0 - 1.5) ** 2, (1.2 - 1.5) ** 2))


def test_ppo_raises_a_synthetic_reward():
    """The reward: the share of TARGET tokens in the answer. A few dozen PPO iterations raise it."""
    hp = hyperparameters(minibatch_size=8, max_new_tokens=8, temperature=1.0, ppo_epochs=2, unfinished_reward=0.0,
                         advantage='gae')
    policy, value = tiny(0), tiny(1, scalar_head=True)
    ref = tiny(0).requires_grad_(False)
    opt_p, opt_v = make_optimizer(policy, 3e-3, 0.0, 'cpu'), make_optimizer(value, 1e-3, 0.0, 'cpu')

    def share_of_target(idx, n_pad, last):
        answers = idx[:, idx.size(1) - hp['max_new_tokens']:]
        return (answers == TARGET).float().mean(1) * 5

    scores, kls = [], []
    for it in range(40):
        batch = rlhf.rollout(policy, ref, value, share_of_target, PROMPTS * 2, torch.tensor(END), nullcontext(), hp)
        batch['score'] = share_of_target(batch['idx'], None, None)  # every answer scored (most never end here)
        rlhf.ppo_update(policy, value, opt_p, opt_v, batch, 0.01, nullcontext(), hp)
        scores.append(batch['score'].mean().item())
        kls.append(((batch['logp'] - batch['ref_logp']) * batch['mask']).sum(1).mean().item())
    assert sum(scores[-5:]) / 5 > 3 * sum(scores[:5]) / 5 + 0.2, scores
    assert all(math.isfinite(k) for k in kls) and kls[-1] > 0


def test_missing_checkpoints_name_the_command_that_makes_them(tiny_chain, tmp_path):
    result = run_script('rlhf.py', f'--init_from={tiny_chain["sft"]}', f'--ref_from={tiny_chain["sft"]}',
                        f'--reward_model={tmp_path}/nothing', '--device=cpu', check=False)
    assert result.returncode != 0 and 'python reward.py' in result.stderr and 'Traceback' not in result.stderr
    result = run_script('rlhf.py', f'--init_from={tmp_path}/sft', f'--ref_from={tmp_path}/sft', '--device=cpu', check=False)
    assert result.returncode != 0 and 'python sft.py' in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_grpo_and_rloo_advantages_by_hand():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0])  # two groups of 4; the second all equal
    std = math.sqrt((1.5 ** 2 + 0.5 ** 2 + 0.5 ** 2 + 1.5 ** 2) / 3)
    grpo = rlhf.grpo_advantages(rewards, 4)
    torch.testing.assert_close(grpo[:4], torch.tensor([-1.5, -0.5, 0.5, 1.5]) / std, atol=1e-5, rtol=1e-5)
    rloo = rlhf.rloo_advantages(rewards, 4)
    # each reward minus the mean of the other three: 1 - 3, 2 - 8/3, 3 - 7/3, 4 - 2
    torch.testing.assert_close(rloo[:4], torch.tensor([-2.0, -2 / 3, 2 / 3, 2.0]))
    for advantages in (grpo, rloo):
        assert torch.equal(advantages[4:], torch.zeros(4))  # equal rewards: no signal, and no NaN


def test_critic_free_advantages_follow_the_groups_of_prompts_through_the_length_sort():
    order = torch.tensor([3, 0, 2, 1])  # row j answers prompt order[j]; prompts 0, 1 one group, 2, 3 the other
    score, kl = torch.tensor([10.0, 20.0, 30.0, 40.0]), torch.tensor([2.0, 4.0, 6.0, 8.0])
    advantages = rlhf.group_advantages(score, kl, order, 0.5, 'rloo', 2)
    # rewards score - 0.5 kl by row: 9, 18, 27, 36; prompt 3 (row 0) with prompt 2 (row 2), prompt 0 (row 1) with 1 (row 3)
    torch.testing.assert_close(advantages, torch.tensor([9.0 - 27.0, 18.0 - 36.0, 27.0 - 9.0, 36.0 - 18.0]))


def test_critic_free_ppo_raises_a_synthetic_reward():
    """As test_ppo_raises_a_synthetic_reward, with no value model: 4 prompts answered 4 times each."""
    hp = hyperparameters(minibatch_size=8, max_new_tokens=8, temperature=1.0, ppo_epochs=2, unfinished_reward=0.0,
                         advantage='grpo', group_size=4)
    policy, ref = tiny(0), tiny(0).requires_grad_(False)
    opt_p = make_optimizer(policy, 3e-3, 0.0, 'cpu')

    def share_of_target(idx, n_pad, last):
        answers = idx[:, idx.size(1) - hp['max_new_tokens']:]
        return (answers == TARGET).float().mean(1) * 5

    prompts = [p for p in PROMPTS[:4] for _ in range(4)]
    scores = []
    for it in range(25):
        batch = rlhf.rollout(policy, ref, None, share_of_target, prompts, torch.tensor(END), nullcontext(), hp)
        batch['score'] = share_of_target(batch['idx'], None, None)
        stats = rlhf.ppo_update(policy, None, opt_p, None, batch, 0.01, nullcontext(), hp)
        scores.append(batch['score'].mean().item())
    assert 'value_loss' not in stats and all(math.isfinite(v) for v in stats.values())
    assert sum(scores[-5:]) / 5 > 3 * sum(scores[:5]) / 5 + 0.2, scores


def test_grpo_stage_on_the_tiny_chain_builds_no_value_model(tiny_chain, tmp_path):
    out = str(tmp_path / 'grpo')
    args = ['rlhf.py', 'config/tiny/rlhf.py', f'--init_from={tiny_chain["sft"]}', f'--ref_from={tiny_chain["sft"]}',
            f'--reward_model={tiny_chain["sft"]}', '--device=cpu']  # (the SFT model with a new head: a flat reward)
    run_script(*args, '--advantage=grpo', f'--out_dir={out}')
    ckpt = torch.load(f'{out}/ckpt.pt', weights_only=True)
    assert ckpt['config']['advantage'] == 'grpo' and not ckpt['model_args']['scalar_head'] and 'gold' in ckpt['metrics']
    train = [json.loads(line) for line in open(f'{out}/metrics.jsonl') if '"train"' in line]
    assert train and all('value_loss' not in row and math.isfinite(row['policy_loss']) for row in train)
    for bad in (['--advantage=grp'], ['--advantage=rloo', '--group_size=3'], ['--eval_interval=0'], ['--ckpt_interval=-1']):
        result = run_script(*args, *bad, f'--out_dir={tmp_path}/bad', check=False)
        assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1 and 'Traceback' not in result.stderr


def test_temperature_zero_is_one_clear_error(tiny_chain, tmp_path):
    result = run_script('rlhf.py', f'--init_from={tiny_chain["sft"]}', f'--ref_from={tiny_chain["sft"]}',
                        '--temperature=0', f'--out_dir={tmp_path}/rlhf', '--device=cpu', check=False)
    assert result.returncode != 0 and '--temperature must be above 0' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / 'rlhf').exists()
