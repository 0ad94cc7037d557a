"""kill -9 in the middle of a stage, then the same command again: it goes on from its last checkpoint
and ends where an uninterrupted run ends: the same weights, logs and answers (on the CPU the
computation is deterministic, and the checkpoint holds the random state the sampling goes on from)."""
import json
import os

import pytest
import torch

from conftest import kill_when, run_script
from model import GPT, GPTConfig, input_stamps, load_checkpoint, resumable, save_checkpoint, save_progress


def kill_at_first_checkpoint(args, out_dir):
    """Starts `python args`, kills it (SIGKILL) as soon as it has written out_dir/ckpt.pt."""
    path = os.path.join(out_dir, 'ckpt.pt')
    kill_when(args, lambda: os.path.exists(path))  # (os.replace makes it appear whole)
    with pytest.raises(SystemExit, match='has not finished'):  # no later stage can take it for a finished one
        load_checkpoint(path, f'python {args[0]}')


def assert_same_run(whole, resumed, files):
    a, b = (torch.load(os.path.join(d, 'ckpt.pt'), weights_only=True) for d in (whole, resumed))
    assert a['model'].keys() == b['model'].keys()
    for name in a['model']:
        assert torch.equal(a['model'][name], b['model'][name]), name
    for name in files:
        with open(os.path.join(whole, name)) as f, open(os.path.join(resumed, name)) as g:
            assert f.read() == g.read(), name


@pytest.fixture(scope='module')
def reward_model(tiny_chain, tmp_path_factory):
    """A tiny RM on the tiny chain's SFT model, for best-of-K and PPO."""
    out = str(tmp_path_factory.mktemp('reward'))
    run_script('reward.py', f'--policy={tiny_chain["sft"]}', f'--init_from={tiny_chain["sft"]}', f'--out_dir={out}',
               '--n_prompts=8', '--k=2', '--n_eval=0', '--max_new_tokens=16', '--device=cpu')
    return out


def test_sft_killed_then_run_again_ends_as_if_never_killed(tiny_chain, tmp_path):
    def args(out):
        return ['sft.py', 'config/tiny/sft.py', '--device=cpu', f'--init_from={tiny_chain["pretrain"]}',
                f'--data_dir={tiny_chain["data"]}', f'--demos={tiny_chain["data"]}/sft.jsonl', '--ckpt_interval=10',
                f'--out_dir={out}']
    run_script(*args(tmp_path / 'whole'))
    kill_at_first_checkpoint(args(tmp_path / 'killed'), tmp_path / 'killed')
    assert 'resuming at iteration' in run_script(*args(tmp_path / 'killed')).stdout
    assert_same_run(tmp_path / 'whole', tmp_path / 'killed', ['metrics.jsonl', 'answers_base.jsonl', 'answers_sft.jsonl'])


def test_bestofk_killed_then_run_again_ends_as_if_never_killed(tiny_chain, reward_model, tmp_path):
    rm = reward_model

    def args(out):  # two rounds: the kill falls in the first, the second samples anew after the resume
        return ['bestofk.py', f'--init_from={tiny_chain["sft"]}', f'--reward_model={rm}', f'--out_dir={out}',
                '--n_prompts=8', '--k=2', '--rounds=2', '--iters=20', '--ckpt_interval=5', '--batch_size=4',
                '--n_eval=8', '--eval_k=4', '--max_new_tokens=16', '--device=cpu']
    run_script(*args(tmp_path / 'whole'))
    kill_at_first_checkpoint(args(tmp_path / 'killed'), tmp_path / 'killed')
    assert 'resuming at round 1' in run_script(*args(tmp_path / 'killed')).stdout
    assert_same_run(tmp_path / 'whole', tmp_path / 'killed', [])
    metrics = [torch.load(tmp_path / d / 'ckpt.pt', weights_only=True)['metrics'] for d in ('whole', 'killed')]
    assert json.dumps(metrics[0]) == json.dumps(metrics[1])


def test_resumable_only_from_an_unfinished_run_of_the_same_command(tmp_path, capsys):
    model = GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=1, n_embd=8))
    inputs = [str(tmp_path / 'input.pt')]
    save_checkpoint(inputs[0], model)
    config = dict(lr=1e-3, out_dir=str(tmp_path))
    path = str(tmp_path / 'ckpt.pt')
    assert resumable(str(tmp_path), config, inputs) is None  # nothing there yet
    save_progress(path, model, inputs, config=config, iter_num=7)
    drawn = torch.rand(3)
    assert resumable(str(tmp_path), config, inputs)['iter_num'] == 7
    assert torch.equal(torch.rand(3), drawn)  # the random state of the save, back: the same draws again
    assert resumable(str(tmp_path), dict(config, lr=2e-3), inputs) is None
    assert 'lr was 0.001' in capsys.readouterr().out
    os.utime(inputs[0], ns=(0, 0))  # the input checkpoint was written again since
    assert resumable(str(tmp_path), config, inputs) is None
    save_checkpoint(path, model, config=config, inputs=input_stamps(inputs), iter_num=9)  # a finished run
    assert resumable(str(tmp_path), config, inputs) is None


@pytest.mark.parametrize('advantage', ['gae', 'rloo'])
def test_rlhf_killed_then_run_again_ends_as_if_never_killed(tiny_chain, reward_model, tmp_path, advantage):
    """PPO goes on with its policy and value model, both optimizers, the reward normalisation, the
    adaptive KL coefficient and the random state of its rollouts (RLOO: without a value model)."""
    rm = reward_model

    def args(out):
        return ['rlhf.py', 'config/tiny/rlhf.py', f'--init_from={tiny_chain["sft"]}', f'--ref_from={tiny_chain["sft"]}',
                f'--reward_model={rm}', f'--advantage={advantage}', '--group_size=2', '--kl_target=1.0', '--iters=6',
                '--eval_interval=3', '--ckpt_interval=1', '--device=cpu', f'--out_dir={out}']
    run_script(*args(tmp_path / 'whole'))
    kill_at_first_checkpoint(args(tmp_path / 'killed'), tmp_path / 'killed')
    assert 'resuming at iteration' in run_script(*args(tmp_path / 'killed')).stdout
    assert_same_run(tmp_path / 'whole', tmp_path / 'killed', ['metrics.jsonl', 'answers.jsonl'])
