"""On a CUDA GPU only (skipped elsewhere, with the reason): the tiny chain in bf16 with torch.compile,
KV-cache generation against recomputation in bf16, and torchrun on two GPUs with nccl. The rest of
the suite runs on the CPU; these are the paths only a GPU takes (cuda:N devices, bf16 kernels,
Triton, nccl). `python -m pytest -q tests` runs them wherever a GPU is."""
import copy
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, run_script
from model import GPT, GPTConfig
from test_resume import kill_at_first_checkpoint

needs_bf16_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or not torch.cuda.is_bf16_supported(including_emulation=False),
    reason='needs a CUDA GPU with native bf16 (Ampere or newer; torch.compile emits bf16 Triton kernels)')
needs_two_bf16_gpus = pytest.mark.skipif(
    torch.cuda.device_count() < 2 or not torch.cuda.is_bf16_supported(including_emulation=False),
    reason='needs two CUDA GPUs with native bf16 (Ampere or newer)')

STAGES = ['data', 'pretrain', 'sft', 'reward', 'bestofk', 'dpo', 'rlhf', 'rloo', 'reward2', 'rlhf2', 'report']
POLICIES = {'pretrain', 'sft', 'bestofk', 'dpo', 'rlhf', 'rloo', 'rlhf2'}


def has_key(script, key):
    """Whether a stage script has this config key (a `key = ...` line at the top)."""
    with open(os.path.join(ROOT, script)) as f:
        return re.search(rf'^{key} = ', f.read(), flags=re.M) is not None


def run_tiny_chain(out, device):
    """run.sh on the tiny presets, every stage on `device` in bf16 and compiled where the script
    compiles: each preset of config/tiny plus device/dtype/compile lines, in a preset folder of its own."""
    presets = out / 'presets'
    presets.mkdir(parents=True)
    for name in os.listdir(os.path.join(ROOT, 'config', 'tiny')):
        with open(os.path.join(ROOT, 'config', 'tiny', name)) as f:
            lines = f.read().rstrip('\n') + '\n'
        script = 'data/prepare.py' if name == 'prepare.py' else name
        if has_key(script, 'device'):
            lines += f"device = '{device}'\ndtype = 'bfloat16'\n"
        if has_key(script, 'compile'):
            lines += 'compile = True\n'  # (the default; said here so that a changed default does not skip it)
        (presets / name).write_text(lines)
    env = {**os.environ, 'PYTHON': sys.executable, 'OUT': str(out), 'PRESET': str(presets), 'OMP_NUM_THREADS': '1',
           'PATH': os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH']}
    result = subprocess.run(['bash', 'run.sh'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def check_tiny_chain(out, stdout, device):
    """What the chain must have written: every stage done, a checkpoint of finite fp32 weights per
    stage (autocast computes in bf16, the weights stay fp32), pretraining's loss fallen, and a report
    card row per policy with a gold score in [0, 1]."""
    assert re.findall(r'^== (\w+): (up to date|done)', stdout, flags=re.M) == [(s, 'done') for s in STAGES]
    assert re.search(rf'process\(es\) on {device}', stdout), stdout[:2000]  # pretraining ran where it was told
    for stage in STAGES[1:-1]:
        ckpt = torch.load(out / stage / 'ckpt.pt', weights_only=True)
        for name, tensor in ckpt['model'].items():
            assert tensor.dtype == torch.float32 and torch.isfinite(tensor).all(), (stage, name)
        assert ckpt['config']['dtype'] == 'bfloat16', stage
    with open(out / 'pretrain' / 'metrics.jsonl') as f:
        evals = [row['val_loss'] for row in map(json.loads, f) if 'val_loss' in row]
    assert all(map(math.isfinite, evals)) and evals[-1] < evals[0] - 1.0, evals
    rows = {}
    for line in (out / 'report.md').read_text().splitlines():
        cells = [c.strip() for c in line.strip('|').split('|')]
        if line.startswith('|') and cells[0] in POLICIES and cells[0] not in rows:
            rows[cells[0]] = cells
    assert set(rows) == POLICIES
    for cells in rows.values():
        gold = float(cells[1].split()[0])
        assert math.isfinite(gold) and 0 <= gold <= 1, cells


@needs_bf16_gpu
def test_the_tiny_chain_on_cuda_in_bf16_compiled(tmp_path):
    stdout = run_tiny_chain(tmp_path, 'cuda')
    check_tiny_chain(tmp_path, stdout, 'cuda:0')


# ----------------------------------------------------------------------------- KV cache in bf16

def sharp_model(device):
    """A random GPT whose every layer matters: weights of unit scale (1/sqrt(fan_in); the embedding,
    tied to the output, std 1; the last norm's weights random), so attention is far from uniform and
    a cache that loses a key or shifts a position changes the logits a lot (at small init the logits
    hardly depend on the context, and nearly any cache would pass)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=256, block_size=64, n_layer=3, n_head=4, n_embd=128))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 1.0 if name == 'wte.weight' else p.size(1) ** -0.5)
        model.norm.weight.normal_()  # (else the tied output embedding mostly repeats the input token)
    return model.to(device).eval()


def padded(prompts, device):
    longest = max(map(len, prompts))
    idx = torch.tensor([[0] * (longest - len(p)) + p for p in prompts], device=device)
    return idx, torch.tensor([longest - len(p) for p in prompts], device=device)


def cached_logits(model, prompts, new):
    """The logits of each next token as generate computes them: the prompts through the KV cache at
    once, then new's tokens (B, T) one at a time, each step reading the cache (teacher forcing: the
    same tokens as the full forward below, whatever the rounding)."""
    idx, n_pad = padded(prompts, new.device)
    kind = new.device.type
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else torch.float32
    cache = model.new_cache(n_pad, idx.size(1) + new.size(1), dtype)
    logits = [model.lm_head(model.hidden(idx, n_pad, cache)[:, -1])]
    for t in range(new.size(1) - 1):
        logits.append(model.lm_head(model.hidden(new[:, t:t + 1], n_pad, cache)[:, -1]))
    return torch.stack(logits, dim=1).float()


def full_logits(model, prompts, new):
    """The same logits recomputed: prompt and new tokens in one forward."""
    idx, n_pad = padded(prompts, new.device)
    return model(torch.cat([idx, new], dim=1), n_pad=n_pad)[0][:, idx.size(1) - 1:-1].float()


def bf16_tolerance(reference):
    """bf16 keeps 8 significant bits: each rounding moves a number by up to eps/2 = 2^-8 of itself.
    The logits come out of a few layers of rounded products, the largest of them (tens) rounded last;
    the budget is 4 such roundings of the largest logit, 2 eps * max |logit| (about 1.6% of it).
    On this model bf16 costs about a third of that (0.3-0.4 of 1.0, measured with CPU autocast),
    while a cache that misses or adds one key moves every position's logits by over 3.5."""
    return 2 * torch.finfo(torch.bfloat16).eps * reference.abs().max().item()


def check_cached_logits_in_bf16(device):
    model = sharp_model(device)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(256, (n,), generator=g).tolist() for n in (5, 17, 11, 30)]  # left padding of 0-25
    new = torch.randint(256, (4, 24), generator=g).to(device)
    with torch.no_grad():
        exact = full_logits(copy.deepcopy(model).double(), prompts, new)  # (fp64: no TF32, no bf16)
        with torch.autocast(device, dtype=torch.bfloat16):
            full, cached = full_logits(model, prompts, new), cached_logits(model, prompts, new)
    tol = bf16_tolerance(exact)
    torch.testing.assert_close(full, exact.float(), rtol=0, atol=tol)  # bf16 itself is within the budget
    torch.testing.assert_close(cached, exact.float(), rtol=0, atol=tol)  # and so is bf16 through the cache


def check_greedy_generation_in_bf16(device):
    """generate (KV cache, bf16, a prompt asked twice read once) against a full forward of each row
    alone (unpadded: the causal, flash path on a GPU). Each token greedy generation chose must be the
    argmax of the recomputed logits, up to bf16's rounding: at a near-tie either token is right, and
    from there a greedy rerun may rightly part from it; so each row is recomputed on its own tokens."""
    model = sharp_model(device)
    g = torch.Generator().manual_seed(2)
    distinct = [torch.randint(256, (n,), generator=g).tolist() for n in (3, 9, 20)]
    prompts = distinct + distinct  # 2 * distinct <= rows: each prompt's keys and values computed once, then copied
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        tokens, lengths = model.generate(prompts, 30, temperature=0)
        assert lengths.tolist() == [30] * len(prompts)
        exact_argmax = 0
        for prompt, row in zip(prompts, tokens):
            seq = torch.cat([torch.tensor(prompt, device=device), row])
            logits = model(seq[None])[0][0, len(prompt) - 1:-1].float()  # the logits that chose each token of row
            chosen, best = logits.gather(1, row[:, None]).squeeze(1), logits.max(dim=1).values
            assert (chosen >= best - bf16_tolerance(logits)).all(), (chosen - best).min()
            exact_argmax += int((chosen == best).sum())
    assert exact_argmax >= 0.9 * tokens.numel()  # near-ties are rare here: the tolerance is not what passes the test


@needs_bf16_gpu
def test_kv_cache_logits_equal_recomputation_in_bf16_on_cuda():
    check_cached_logits_in_bf16('cuda')


@needs_bf16_gpu
def test_greedy_generation_in_bf16_on_cuda_picks_the_recomputed_argmax():
    check_greedy_generation_in_bf16('cuda')


# ----------------------------------------------------------------------------- two GPUs

def check_torchrun_two_ranks(tmp_path, device):
    """pretrain.py under torchrun, two processes (nccl on GPUs: one each), bf16 and compiled
    (tests/ddp_sync.py writes each rank's parameter checksums at the end): the run finishes,
    writes its checkpoint, learns, and both ranks hold the very same weights (DDP broadcasts rank
    0's at the start and every step applies the same all-reduced gradients)."""
    data, out = tmp_path / 'data', tmp_path / 'ddp'
    run_script('data/prepare.py', 'config/tiny/prepare.py', f'--out_dir={data}')
    result = run_script('-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'tests/ddp_sync.py',
                        'config/tiny/pretrain.py', f'--device={device}', '--dtype=bfloat16', '--compile=True',
                        '--max_iters=30', '--eval_interval=15', f'--data_dir={data}', f'--out_dir={out}')
    assert re.search(rf'2 process\(es\) on {device}\b', result.stdout), result.stdout[-2000:]
    checksums = [json.loads((out / f'rank{rank}.json').read_text()) for rank in (0, 1)]
    assert checksums[0] == checksums[1]
    assert all(map(math.isfinite, checksums[0]))
    ckpt = torch.load(out / 'ckpt.pt', weights_only=True)
    assert ckpt['iter_num'] == 30 and all(torch.isfinite(t).all() for t in ckpt['model'].values())
    with open(out / 'metrics.jsonl') as f:
        evals = [row['val_loss'] for row in map(json.loads, f) if 'val_loss' in row]
    assert len(evals) == 3 and all(map(math.isfinite, evals)) and evals[-1] < evals[0], evals


@needs_two_bf16_gpus
def test_torchrun_on_two_gpus_keeps_the_ranks_in_sync(tmp_path):
    check_torchrun_two_ranks(tmp_path, 'cuda')


# ----------------------------------------------------------------------------- resume on a GPU

@needs_bf16_gpu
def test_sft_killed_on_cuda_goes_on_from_its_checkpoint(tiny_chain, tmp_path):
    """The checkpoint's random states come back from the GPU to the CPU where torch restores them
    from (a resumed run on CUDA once stopped there); the resumed run finishes with finite weights.
    (Bit-equality with an uninterrupted run is checked on the CPU, tests/test_resume.py: CUDA's
    kernels need not be deterministic.)"""
    args = ['sft.py', 'config/tiny/sft.py', '--device=cuda', '--dtype=bfloat16', f'--init_from={tiny_chain["pretrain"]}',
            f'--data_dir={tiny_chain["data"]}', f'--demos={tiny_chain["data"]}/sft.jsonl', '--ckpt_interval=10',
            f'--out_dir={tmp_path}']
    kill_at_first_checkpoint(args, tmp_path)
    assert 'resuming at iteration' in run_script(*args).stdout
    ckpt = torch.load(tmp_path / 'ckpt.pt', weights_only=True)
    assert 'finished' not in ckpt and all(torch.isfinite(t).all() for t in ckpt['model'].values())
