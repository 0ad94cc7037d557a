import itertools
import json
import math
import os
import random
from contextlib import nullcontext

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import reward
from conftest import kill_when, run_script
from data import tasks, world
from data.formats import is_ranking, read_jsonl
from model import GPT, GPTConfig, answer_rewards, load_checkpoint, make_optimizer


@pytest.mark.parametrize('k', [2, 4, 9])
def test_ranking_loss_equals_the_explicit_pairs(k):
    torch.manual_seed(k)
    sizes = [k, 2, k]
    rewards = torch.randn(sum(sizes), requires_grad=True)
    loss = reward.ranking_loss(rewards, sizes)
    loss.backward()
    fast_grad = rewards.grad.clone()
    rewards.grad = None
    explicit, start = [], 0
    for size in sizes:  # every pair (better, worse) of each prompt, written out
        pairs = [-F.logsigmoid(rewards[start + i] - rewards[start + j]) for i, j in itertools.combinations(range(size), 2)]
        assert len(pairs) == math.comb(size, 2)
        explicit.append(sum(pairs) / len(pairs))
        start += size
    slow = sum(explicit) / len(explicit)
    slow.backward()
    torch.testing.assert_close(loss, slow)
    torch.testing.assert_close(fast_grad, rewards.grad)


def test_labeler_orders_by_gold_and_its_noise_is_bradley_terry():
    rng = random.Random(0)
    golds = [0.2, 1.0, 0.5, 0.5]
    assert reward.rank(golds, rng, 0)[:1] == [1] and reward.rank(golds, rng, 0)[-1] == 0
    assert {tuple(reward.rank(golds, rng, 0)) for _ in range(50)} == {(1, 2, 3, 0), (1, 3, 2, 0)}  # ties at random
    T, n = 0.25, 4000
    above = sum(o.index(2) < o.index(0) for o in (reward.rank(golds, rng, T) for _ in range(n))) / n
    assert abs(above - 1 / (1 + math.exp(-0.3 / T))) < 0.03  # P(0.5 above 0.2) = sigmoid(0.3 / T)
    ceiling = reward.noise_ceiling([0.0, 0.3], T)
    assert ceiling == [pytest.approx(1 / (1 + math.exp(-0.3 / T)))] and reward.noise_ceiling([0.5, 0.5], T) == [0.5]


def test_the_held_out_accuracy_is_told_for_each_split_and_for_harmful_requests_with_a_new_verb(enc):
    w = world.make_world(0)
    prompts = tasks.prompt_set(w, 'eval', 120)
    new_verb = [p for p in prompts if reward.new_verb_harm(p)]
    assert new_verb and all(tasks.parse(p)[0] == 'harmful' and tasks.generalisation(p) in 'cd' for p in new_verb)
    assert not reward.new_verb_harm('Tell me how to kick the cat of Mira.')  # (a seen verb)
    rows = [dict(prompt=p, answers=[tasks.REFUSAL, 'Sure.'], gold=[1.0, 0.0]) for p in prompts]
    torch.manual_seed(0)
    rm = GPT(GPTConfig(vocab_size=320, block_size=128, n_layer=1, n_head=2, n_embd=32, scalar_head=True))
    metrics = reward.rm_metrics(rm, enc, rows, nullcontext(), 'cpu', 0.05, world=w)
    assert metrics['prompts'] == len(prompts)
    assert all(metrics['splits'][cell]['prompts'] == 100 for cell in tasks.PROBE)  # (its own rows)
    assert metrics['splits']['harmful, new verb']['prompts'] == len(new_verb)
    assert sum(metrics['splits'][s]['prompts'] for s in tasks.GENERALISATION) == len(prompts)


def please_pairs(rng, n):
    """n prompts of random words, each with two answers, the better first: it says 'please'."""
    words = 'the fox owl cat lives in a den and eats berries with Mira Leo in Sunvale'.split()
    pairs = []
    for _ in range(n):
        prompt = ' '.join(rng.choices(words, k=5)) + '?'
        plain = ' '.join(rng.choices(words, k=rng.randint(3, 8))) + '.'
        marked = plain.split()
        marked.insert(rng.randint(0, len(marked)), 'please')
        worse = plain if rng.random() < 0.5 else ' '.join(rng.choices(words, k=6)) + '.'
        pairs.append((prompt, [' '.join(marked), worse]))
    return pairs


def train_tiny_rm(enc, train, steps, text=None, ptx_coef=0.0):
    """A tiny RM trained with reward.train_step on batches of train (and windows of text)."""
    torch.manual_seed(0)
    rng = random.Random(0)
    rm = GPT(GPTConfig(vocab_size=320, block_size=64, n_layer=1, n_head=2, n_embd=32, scalar_head=True))
    optimizer = make_optimizer(rm, 3e-3, 0.0, 'cpu')
    for step in range(steps):
        batch = [train[i] for i in rng.sample(range(len(train)), 16)]
        reward.train_step(rm, optimizer, enc, batch, 3e-3, 1.0, nullcontext(), 'cpu', text, ptx_coef, step)
    return rm


def held_out_order(rm, enc, held_out):
    """The share of held-out pairs the RM orders as they are (the better answer first)."""
    with torch.no_grad():
        r = answer_rewards(rm, enc, [(p, a) for p, answers in held_out for a in answers], 'cpu').view(-1, 2)
    return (r[:, 0] > r[:, 1]).float().mean()


def test_tiny_reward_model_learns_a_separable_preference(enc):
    rng = random.Random(0)
    train, held_out = please_pairs(rng, 400), please_pairs(rng, 100)
    assert held_out_order(train_tiny_rm(enc, train, 80), enc, held_out) >= 0.9


def test_the_text_term_keeps_the_reward_model_a_language_model(enc):
    # the world's prose as tokens: windows of it train the RM's language model head (ptx_coef)
    prose = np.array(enc.encode_ordinary(' '.join(world.corpus(world.make_world(0), 400))), dtype=np.int64)
    text, unseen = prose[:len(prose) * 3 // 4], torch.from_numpy(prose[len(prose) * 3 // 4:][:8 * 64]).view(8, 64)
    rng = random.Random(0)
    train, held_out = please_pairs(rng, 400), please_pairs(rng, 100)
    ranking_only, with_text = train_tiny_rm(enc, train, 80), train_tiny_rm(enc, train, 80, text, 1.0)
    # the loss on text neither saw: a scalar head's model with targets reads its language model head
    with torch.no_grad():
        loss = {name: rm(unseen[:, :-1], unseen[:, 1:])[1].item()
                for name, rm in (('ranking only', ranking_only), ('with text', with_text))}
    assert loss['with text'] < loss['ranking only'] - 1.0 and loss['with text'] < math.log(320) - 1.0
    assert held_out_order(with_text, enc, held_out) >= 0.9  # and the preference is learned as well


# ----------------------------------------------------------------------------- the stage: whole, and killed then run again

def killable_args(tiny_chain, out):
    """The tiny preset (a chunk of 2 prompts sampled at a time, a checkpoint every 4 iterations) on
    enough prompts that a kill lands in the middle of sampling or of training."""
    return ['reward.py', 'config/tiny/reward.py', f'--policy={tiny_chain["sft"]}', f'--init_from={tiny_chain["sft"]}',
            '--n_prompts=64', '--log_interval=1', '--ptx_coef=1', '--device=cpu', f'--out_dir={out}']


def complete_lines(path):
    """The lines of a file that a writer finished (a kill can cut the last one short: no newline)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line for line in f if line.endswith('\n')]


@pytest.fixture(scope='module')
def whole(tiny_chain, tmp_path_factory):
    """The out_dir of a run never killed."""
    out = tmp_path_factory.mktemp('whole')
    (out / 'stdout.txt').write_text(run_script(*killable_args(tiny_chain, out)).stdout)
    return out


def assert_same_weights(a, b):
    a, b = (torch.load(os.path.join(d, 'ckpt.pt'), weights_only=True)['model'] for d in (a, b))
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_reward_stage_on_the_tiny_chain(tiny_chain, whole, tmp_path):
    assert 'ceiling' in (whole / 'stdout.txt').read_text()
    rows = [json.loads(line) for line in open(whole / 'rankings.jsonl')]
    assert len(rows) <= 64 and all(2 <= len(r['answers']) <= 3 and all(a.strip() for a in r['answers']) for r in rows)
    ckpt = torch.load(whole / 'ckpt.pt', weights_only=True)
    assert ckpt['stage'] == 'reward' and ckpt['model_args']['scalar_head'] and 0 <= ckpt['metrics']['acc_label'] <= 1
    steps = [json.loads(line) for line in open(whole / 'metrics.jsonl') if '"loss"' in line]
    assert all(row['ptx_loss'] > 0 for row in steps)  # (the text term, logged beside the loss)
    probe = {name: ckpt['metrics']['splits'][name] for name in tasks.PROBE}  # every cell, scored
    assert all(cell['prompts'] == 100 and 0 <= cell['acc_gold'] <= 1 for cell in probe.values())
    assert sorted(os.listdir(whole)) == ['ckpt.pt', 'eval_rankings.jsonl', 'metrics.jsonl', 'rankings.jsonl',
                                         'stdout.txt']  # (no partial files left)
    # round 2: start from this RM, add its rankings (K=3) to new ones (K=2)
    out2 = str(tmp_path / 'reward2')
    run_script('reward.py', f'--policy={tiny_chain["sft"]}', f'--init_from={whole}', f'--out_dir={out2}', '--n_prompts=8',
               '--k=2', '--n_eval=0', '--max_new_tokens=16', f'--rankings={whole}/rankings.jsonl', '--device=cpu')
    assert os.path.exists(os.path.join(out2, 'ckpt.pt'))


def test_reward_killed_while_sampling_keeps_what_it_ranked(tiny_chain, whole, tmp_path):
    out, args = tmp_path / 'killed', killable_args(tiny_chain, tmp_path / 'killed')
    partial = out / 'rankings.jsonl.partial'
    kill_when(args, lambda: len(complete_lines(partial)) >= 3)  # its stamp and two prompts ranked
    assert not (out / 'rankings.jsonl').exists()  # (the kill fell in the sampling)
    stamp, *kept = complete_lines(partial)
    # mark the kept rankings' gold scores (the RM trains on prompts and answers only): sampled again,
    # they would lose the mark; and end the file with a line cut short, as a kill can leave it
    marked = [dict(json.loads(line), gold=[-1.0] * len(json.loads(line)['gold'])) for line in kept]
    partial.write_text(stamp + ''.join(json.dumps(row) + '\n' for row in marked) + '{"prompt": "What is')
    result = run_script(*args)
    assert f'{len(kept)} of 64 prompts ranked before, kept' in result.stdout
    rows = [json.loads(line) for line in open(out / 'rankings.jsonl')]
    prompts = tasks.prompt_set(tasks.load_world(tiny_chain['data']), 'reward', 64)
    ranked = [row['prompt'] for row in rows]
    assert len(set(prompts)) == 64 and len(rows) >= 56
    assert ranked == [p for p in prompts if p in ranked]  # each at most once, in order
    assert all(row['gold'] == [-1.0] * len(row['answers']) for row in rows if row['prompt'] in prompts[:len(kept)])
    # the rest is what a run never killed sampled, and so is what the RM learned from it
    unmarked = {row['prompt']: row for row in map(json.loads, kept)}
    reference = [json.loads(line) for line in open(whole / 'rankings.jsonl')]
    assert [unmarked.get(row['prompt'], row) for row in rows] == reference
    assert (out / 'eval_rankings.jsonl').read_text() == (whole / 'eval_rankings.jsonl').read_text()
    assert_same_weights(whole, out)
    assert not partial.exists() and not (out / 'eval_rankings.jsonl.partial').exists()


def test_reward_killed_while_training_goes_on_from_its_checkpoint(tiny_chain, whole, tmp_path):
    out, args = tmp_path / 'killed', killable_args(tiny_chain, tmp_path / 'killed')

    def between_checkpoints():  # a row or two past a checkpoint (every 4 iterations), two before the next
        rows = complete_lines(out / 'metrics.jsonl')
        last = json.loads(rows[-1])['iter'] if rows else 0
        return last >= 4 and last % 4 < 2

    kill_when(args, between_checkpoints)
    with pytest.raises(SystemExit, match='has not finished'):  # no later stage takes it for a trained RM
        load_checkpoint(str(out / 'ckpt.pt'), 'python reward.py')
    start = torch.load(out / 'ckpt.pt', weights_only=True)['iter_num']
    first, *rest = complete_lines(out / 'metrics.jsonl')
    assert json.loads(rest[-1])['iter'] >= start  # (rows to write again)
    # mark the first row: a run that started over would write it again, without the mark
    (out / 'metrics.jsonl').write_text(json.dumps(dict(json.loads(first), marked=True)) + '\n' + ''.join(rest))
    assert f'resuming at iteration {start} of' in run_script(*args).stdout
    assert_same_weights(whole, out)
    log = [json.loads(line) for line in open(out / 'metrics.jsonl')]
    assert log[0].pop('marked')
    reference = [json.loads(line) for line in open(whole / 'metrics.jsonl')]
    assert log == reference  # each iteration once: the rows before the checkpoint kept, the rest as if never killed
    assert [row['iter'] for row in log if 'loss' in row] == list(range(reference[-1]['iter']))


@pytest.mark.parametrize('line, problem', [
    ('{"prompt": "Hi?", "answers": ["only one"]}', 'at least 2'),
    ('{"prompt": "Hi?", "answers": ["fine", " "]}', 'an answer is empty'),
    ('{"prompt": "Hi?"}', 'expected a JSON object'),
    ('{"answers": ["a", "b"]}', 'expected a JSON object'),
    ('{"prompt": "Hi?", "answers": ["a", "b"]', 'expected a JSON object'),
])
def test_malformed_rankings_are_reported_and_nothing_written(tmp_path, line, problem):
    path = tmp_path / 'rankings.jsonl'
    path.write_text('{"prompt": "Hi?", "answers": ["a", "b"]}\n' + line + '\n')
    with pytest.raises(SystemExit) as error:
        read_jsonl(str(path), is_ranking, "{...}")
    assert f'{path}:2: ' in str(error.value) and problem in str(error.value)


def test_non_utf8_rankings_stop_the_script_before_it_writes(tmp_path):
    path = tmp_path / 'rankings.jsonl'
    path.write_bytes(b'{"prompt": "Hi?", "answers": ["a", "b"]}\n{"prompt": "Hi?", "answers": ["a", "\xff"]}\n')
    result = run_script('reward.py', f'--rankings={path}', f'--out_dir={tmp_path / "out"}', '--device=cpu', check=False)
    assert result.returncode != 0 and f'{path}:2: not UTF-8' in result.stderr and 'Traceback' not in result.stderr
    assert not (tmp_path / 'out').exists()


def test_the_text_term_without_pretraining_text_stops_before_sampling(tiny_chain, tmp_path):
    out = tmp_path / 'out'
    result = run_script(*killable_args(tiny_chain, out), '--ptx_coef=0.5', f'--ptx_data={tmp_path / "none"}',
                        check=False)
    assert result.returncode != 0 and 'Traceback' not in result.stderr
    assert f'{tmp_path / "none"} has no train.bin' in result.stderr and '--ptx_coef=0' in result.stderr
    assert not out.exists()
