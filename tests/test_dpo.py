import copy
import json
import math
import os
import random
from contextlib import nullcontext

import pytest
import torch

import dpo
from conftest import run_script
from model import (GPT, GPTConfig, answer_examples, load_checkpoint, logprobs_of, make_optimizer,
                   sequence_logprobs)
from test_resume import assert_same_run, kill_at_first_checkpoint


def tiny_policy(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=320, block_size=64, n_layer=1, n_head=2, n_embd=32))


def test_losses_pairs_and_accuracy_by_hand():
    h = torch.tensor([-2.0, 0.0, 3.0])
    beta = 0.5
    expected = [math.log(1 + math.exp(-beta * x)) for x in h.tolist()]  # -log sigmoid(beta h)
    torch.testing.assert_close(dpo.dpo_loss(h, beta), torch.tensor(expected))
    torch.testing.assert_close(dpo.ipo_loss(h, beta), torch.tensor([(-2.0 - 1.0) ** 2, 1.0, (3.0 - 1.0) ** 2]))
    better, worse = dpo.pairs([3, 2])  # answers 0, 1, 2 of one prompt, 3, 4 of the next
    assert better.tolist() == [0, 0, 1, 3] and worse.tolist() == [1, 2, 2, 4]
    label, gold = dpo.pair_accuracy(torch.tensor([1.0, -1.0, 0.0, 2.0]), torch.tensor([0.5, 0.0, 0.2, -0.1]))
    assert label == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert gold == pytest.approx((1 + 0.5 + 0) / 3)  # the pair whose gold is equal is left out


def rows_of(rng, n):
    """Rankings of two answers to a prompt: the better one says 'please'."""
    words = 'the fox owl cat lives in a den and eats berries with Mira Leo in Sunvale'.split()
    rows = []
    for _ in range(n):
        plain = ' '.join(rng.choices(words, k=rng.randint(3, 8))) + '.'
        marked = plain.split()
        marked.insert(rng.randint(0, len(marked)), 'please')
        other = plain if rng.random() < 0.5 else ' '.join(rng.choices(words, k=6)) + '.'
        rows.append(dict(prompt=' '.join(rng.choices(words, k=5)) + '?', answers=[' '.join(marked), other]))
    return rows


def test_at_the_start_the_loss_is_log_2_and_one_step_raises_the_chosen_answer(enc):
    policy = tiny_policy()
    ref = copy.deepcopy(policy).requires_grad_(False)
    rows = rows_of(random.Random(0), 4)
    examples = dpo.ranking_examples(enc, rows, 64)
    logp = sequence_logprobs(policy, examples, 'cpu')
    # the answer's tokens and its <|end|>, the prompt masked: as each answer alone (no padding) sums them
    expected = [logprobs_of(policy, answer_examples(enc, [r['prompt']], [a], 64), nullcontext(), 'cpu').item()
                for r in rows for a in r['answers']]
    torch.testing.assert_close(logp.detach(), torch.tensor(expected), atol=1e-4, rtol=1e-4)
    ratio = logp - sequence_logprobs(ref, examples, 'cpu')
    assert torch.equal(ratio, torch.zeros_like(ratio))  # implicit rewards exactly 0
    better, worse = dpo.pairs([2] * len(rows))
    for loss_fn in (dpo.dpo_loss, dpo.ipo_loss):
        model = copy.deepcopy(policy)
        logp = sequence_logprobs(model, examples, 'cpu')
        r = logp - sequence_logprobs(ref, examples, 'cpu')
        loss = loss_fn(r[better] - r[worse], 0.1).mean()
        if loss_fn is dpo.dpo_loss:
            assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
        loss.backward()
        torch.optim.SGD(model.parameters(), lr=1e-3).step()  # (a small step: first order)
        with torch.no_grad():
            after = sequence_logprobs(model, examples, 'cpu') - sequence_logprobs(ref, examples, 'cpu')
        assert (after[better] - after[worse]).mean() > 0  # the chosen answers rose relative to the rejected ones


def test_tiny_dpo_learns_a_separable_preference(enc):
    rng = random.Random(0)
    train, held_out = rows_of(rng, 200), rows_of(rng, 100)
    policy = tiny_policy()
    ref = copy.deepcopy(policy).requires_grad_(False)
    train_sets = [dpo.ranking_examples(enc, [r], 64) for r in train]
    ref_train = [sequence_logprobs(ref, s, 'cpu').detach() for s in train_sets]
    optimizer = make_optimizer(policy, 3e-3, 0.0, 'cpu')
    better, worse = dpo.pairs([2] * 16)
    for step in range(30):
        ids = rng.sample(range(len(train)), 16)
        ratio = sequence_logprobs(policy, [e for i in ids for e in train_sets[i]], 'cpu') - torch.cat([ref_train[i] for i in ids])
        dpo.dpo_loss(ratio[better] - ratio[worse], 0.1).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    examples = dpo.ranking_examples(enc, held_out, 64)
    with torch.no_grad():
        ratio = sequence_logprobs(policy, examples, 'cpu') - sequence_logprobs(ref, examples, 'cpu')
    better, worse = dpo.pairs([2] * len(held_out))
    accuracy, _ = dpo.pair_accuracy(ratio[better] - ratio[worse], torch.ones(len(held_out)))
    assert accuracy >= 0.9


def test_dpo_stage_on_the_tiny_chain(tiny_chain, tmp_path):
    rm = str(tmp_path / 'reward')
    run_script('reward.py', f'--policy={tiny_chain["sft"]}', f'--init_from={tiny_chain["sft"]}', f'--out_dir={rm}',
               '--n_prompts=8', '--k=3', '--n_eval=4', '--max_new_tokens=16', '--batch_size=4', '--epochs=1', '--device=cpu')
    out = str(tmp_path / 'dpo')
    args = ['dpo.py', 'config/tiny/dpo.py', f'--init_from={tiny_chain["sft"]}', f'--ref_from={tiny_chain["sft"]}',
            f'--rankings={rm}/rankings.jsonl', f'--eval_rankings={rm}/eval_rankings.jsonl', f'--out_dir={out}', '--device=cpu']
    result = run_script(*args)
    assert 'implicit-reward accuracy' in result.stdout
    ckpt = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)
    assert ckpt['stage'] == 'dpo' and not ckpt['model_args']['scalar_head']
    assert 0 <= ckpt['metrics']['gold'] <= 1 and math.isfinite(ckpt['metrics']['kl'])
    log = [json.loads(line) for line in open(os.path.join(out, 'metrics.jsonl'))]
    implicit = [r for r in log if r['kind'] == 'implicit']
    assert implicit[0]['acc_label'] == 0.5 and implicit[0]['margin'] == 0  # policy = reference: every pair a tie
    assert any(r['kind'] == 'train' for r in log) and log[-1]['kind'] == 'eval'
    # bad input: one line, no traceback, nothing written
    for bad in ('--loss=dop', f'--rankings={tmp_path}/none.jsonl', '--eval_interval=0', '--ckpt_interval=-1'):
        result = run_script(*args, bad, f'--out_dir={tmp_path}/bad', check=False)
        assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1 and 'Traceback' not in result.stderr
        assert not (tmp_path / 'bad').exists()


def test_dpo_killed_then_run_again_ends_as_if_never_killed(tiny_chain, tmp_path):
    """It goes on with the policy, the optimizer, its place in the data (the kill falls in the second of
    three epochs) and the random state of the held-out answers: the first checkpoint, at step 4, comes
    after the answers of step 2, and the kill falls in the evaluation of step 4, which it does again."""
    rng = random.Random(0)
    for name, rows in (('rankings', rows_of(rng, 8)), ('eval_rankings', rows_of(rng, 4))):
        with open(tmp_path / f'{name}.jsonl', 'w') as f:
            f.writelines(json.dumps(dict(row, gold=[1.0, 0.0])) + '\n' for row in rows)

    def args(out):  # 8 prompts, 4 a step: 2 steps an epoch, 6 in all
        return ['dpo.py', 'config/tiny/dpo.py', f'--init_from={tiny_chain["sft"]}', f'--ref_from={tiny_chain["sft"]}',
                f'--rankings={tmp_path}/rankings.jsonl', f'--eval_rankings={tmp_path}/eval_rankings.jsonl', '--epochs=3',
                '--eval_interval=2', '--ckpt_interval=4', '--device=cpu', f'--out_dir={out}']
    run_script(*args(tmp_path / 'whole'))
    kill_at_first_checkpoint(args(tmp_path / 'killed'), tmp_path / 'killed')
    assert 'resuming at iteration 4' in run_script(*args(tmp_path / 'killed')).stdout
    assert_same_run(tmp_path / 'whole', tmp_path / 'killed', ['metrics.jsonl', 'answers.jsonl'])
    _, ckpt = load_checkpoint(str(tmp_path / 'killed' / 'ckpt.pt'), 'python dpo.py')  # finished: later stages load it
    whole = torch.load(tmp_path / 'whole' / 'ckpt.pt', weights_only=True)
    assert json.dumps(ckpt['metrics']) == json.dumps(whole['metrics'])
