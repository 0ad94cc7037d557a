"""Speed, in alternating rounds so that noise hits both sides (README: "Throughput"). --mode=train:
training tokens/s and MFU of model.py's GPT beside a GPT-2-style model (nanoGPT's block); --mode=
sample: sample_answers on a checkpoint as the stages call it, then generate (KV cache) beside a
generate that reruns the whole context per token. --compare=path/to/model.py: time that one too.
--mode=serve: time to first token and tokens/s of 1, then several, concurrent streams of serve.py.

  python bench.py                                  # training, the classroom size (2.0M) on the CPU
  python bench.py --n_layer=12 --n_head=12 --n_embd=768 --block_size=1024 --batch_size=16   # GPU
  python bench.py --mode=sample --ckpt=out/sft --dtype=float32
  python serve.py & python bench.py --mode=serve --streams=1,8    # against a running serve.py
"""
import http.client
import importlib.util
import json
import math
import os
import sys
import threading
import time
from dataclasses import asdict
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from data import tasks
from model import (GPT, GPTConfig, configure, flops_per_token, load_checkpoint, load_tokenizer,
                   make_optimizer, peak_flops, prompt_tokens, sample_answers, setup)

# -----------------------------------------------------------------------------
mode = 'train'             # 'train' or 'sample'
compare = ''               # the path of another model.py to time side by side ('': none)
n_layer = 4
n_head = 4
n_embd = 192
block_size = 256
batch_size = 16
vocab_size = 1216
rounds = 5                 # timed rounds per model, alternating
steps_per_round = 10
device = 'auto'
dtype = 'auto'
compile = True             # CUDA only
baseline = True            # also time the GPT-2-style model
# sample mode
ckpt = 'out/sft'           # a stage's directory (holding ckpt.pt)
data_dir = 'out/data/world'
n_prompts = 512            # the world's RL prompts, answered in batches as the stages do
k = 1                      # answers per prompt (reward.py, bestofk.py and report.py ask 8)
sample_batch_size = 256
max_new_tokens = 128
temperature = 1.0
sample_rounds = 2
# serve mode (also ckpt's stage name, data_dir's held-out prompts, max_new_tokens, temperature)
url = 'http://127.0.0.1:8000'   # a running serve.py
streams = '1,8'            # how many concurrent streams, one test after the other
# -----------------------------------------------------------------------------


class GPT2Block(nn.Module):
    """The GPT-2 block (Radford et al. 2019), without biases."""
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.ln1, self.ln2 = nn.LayerNorm(d, bias=False), nn.LayerNorm(d, bias=False)
        self.qkv, self.proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.fc, self.out = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2)
                   for t in self.qkv(self.ln1(x)).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT2(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(GPT2Block(cfg.n_embd, cfg.n_head) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=False)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight

    num_params = GPT.num_params

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return logits, F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def other_model_py(compare):
    """The module at the path `compare` (another version of model.py), or None."""
    if not compare:
        return None
    if not os.path.isfile(compare):
        sys.exit(f'error: --compare={compare}: no such file')
    spec = importlib.util.spec_from_file_location('model_compare', compare)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def alternate(runs, rounds, device):
    """(seconds, results) of each run (a dict of functions): the fastest of alternating rounds
    (noise from other processes only ever slows a round down), and what each round returned."""
    times, results = {name: [] for name in runs}, {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            if device.startswith('cuda'):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            results[name].append(run())
            if device.startswith('cuda'):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    return {name: min(t) for name, t in times.items()}, results


def train_steps(model, optimizer, x, y, steps, autocast):
    """One round of train: `steps` optimizer steps on the batch (x, y)."""
    for _ in range(steps):
        with autocast:
            loss = model(x, y)[1]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def train(cfg, batch_size, rounds, steps_per_round, compile, baseline, other, device, autocast,
          peak):
    """Training tokens/s and MFU of model.py's GPT (cfg), of `other` model.py and of GPT2."""
    models = {'model.py GPT': GPT(cfg)}
    models |= {'compare': other.GPT(other.GPTConfig(**asdict(cfg)))} if other else {}
    models |= {'GPT-2 style': GPT2(cfg)} if baseline else {}
    x, y = torch.randint(cfg.vocab_size, (2, batch_size, cfg.block_size), device=device)
    steps = {}
    for name, model in models.items():
        model.to(device).train()
        optimizer = make_optimizer(model, 1e-4, 0.1, device)
        compiled = torch.compile(model) if compile and device.startswith('cuda') else model
        steps[name] = partial(train_steps, compiled, optimizer, x, y, steps_per_round, autocast)
        steps[name]()  # warm up (and compile)
    seconds = alternate(steps, rounds, device)[0]
    print(f'batch {batch_size} x {cfg.block_size}, {rounds} rounds of {steps_per_round} steps')
    for name, model in models.items():
        tok_s = steps_per_round * batch_size * cfg.block_size / seconds[name]
        flops = flops_per_token(model) * tok_s
        print(f'{name:14s} {model.num_params() / 1e6:7.2f}M params  {tok_s:>10,.0f} '
              f'tokens/s  {flops / 1e12:7.3f} TFLOP/s  MFU {100 * flops / peak:5.1f}%'
              + ('' if math.isfinite(peak) else ' (unknown peak)'))
    for name in list(models)[1:]:  # (tokens/s model.py / name = seconds name / model.py)
        print(f'ratio model.py / {name}: {seconds[name] / seconds["model.py GPT"]:.2f}')


@torch.no_grad()
def generate_recompute(model, prompts, new_tokens, temperature):
    """nanoGPT's generate: the whole (left-padded) context through the model for every new token."""
    longest = max(len(p) for p in prompts)
    device = next(model.parameters()).device
    n_pad = torch.tensor([longest - len(p) for p in prompts], device=device)
    idx = torch.tensor([[0] * (longest - len(p)) + p for p in prompts], device=device)
    for _ in range(new_tokens):
        logits = model(idx, n_pad=n_pad)[0][:, -1].float() / temperature
        idx = torch.cat([idx, torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)], dim=1)
    return idx[:, longest:]


def sample(ckpt, data_dir, n_prompts, k, max_new_tokens, temperature, batch_size, rounds, other,
           device, autocast, peak):
    """Sampling speed on a checkpoint: sample_answers, then generate against generate_recompute."""
    model, checkpoint = load_checkpoint(os.path.join(ckpt, 'ckpt.pt'), 'the stage that writes it',
                                        device, scalar_head=False)
    enc = load_tokenizer(checkpoint['tokenizer'])
    prompts = [p for p in tasks.prompt_set(tasks.load_world(data_dir), 'rl', n_prompts)
               for _ in range(k)]
    models = {'model.py': model.eval()}
    if other:
        models['compare'] = other.GPT(other.GPTConfig(**asdict(model.config))).to(device).eval()
        models['compare'].load_state_dict(model.state_dict())
    runs = {name: partial(other.sample_answers if name == 'compare' else sample_answers, m, enc,
                          prompts, max_new_tokens, temperature, batch_size)
            for name, m in models.items()}  # sample_answers as the stages call it
    with autocast:
        seconds, answers = alternate(runs, rounds, device)
    # forward FLOPs: 2 N per token for the matmuls, 2 L d T^2 for attention over T tokens; a
    # prompt asked k times is read once (its P tokens: 2 N P + 2 L d P^2), each answer after it
    params, ld2 = model.num_params(), 2 * model.config.n_layer * model.config.n_embd
    tok_s = {}
    for name in models:
        lengths = [(len(prompt_tokens(enc, p)), len(a))
                   for p, a in zip(prompts * rounds, sum(answers[name], []))]
        tokens = sum(n for _, n in lengths) / rounds
        tok_s[name] = tokens / seconds[name]
        flop_s = sum(2 * params * n + ld2 * (P + n) ** 2 - ld2 * P ** 2 + (2 * params * P
                     + ld2 * P ** 2) / k for P, n in lengths) / rounds / seconds[name]
        print(f'sample_answers {name:9s} {len(prompts) / seconds[name]:7.1f} answers/s  '
              f'{tok_s[name]:8,.0f} answer tokens/s  {flop_s / 1e9:7.2f} GFLOP/s '
              f'({100 * flop_s / peak:.1f}% of peak)  {tokens / len(prompts):.0f} tokens/answer')
    if other:
        print(f'sample_answers tokens/s, model.py / compare: '
              f'{tok_s["model.py"] / tok_s["compare"]:.2f}x ({n_prompts} prompts x {k} answers in '
              f'batches of {batch_size}, {rounds} rounds)')
    few = [prompt_tokens(enc, p) for p in prompts[:16]]
    samplers = {'generate': model.generate, 'recompute': partial(generate_recompute, model)}
    samplers |= {'compare': models['compare'].generate} if other else {}
    for new_tokens in (64, 128):  # without a stop token: every row writes new_tokens
        runs = {name: partial(gen, few, new_tokens, temperature) for name, gen in samplers.items()}
        with autocast:
            seconds = alternate(runs, rounds, device)[0]
        speeds = ', '.join(f'{name} {16 * new_tokens / s:,.0f} tokens/s'
                           for name, s in seconds.items())
        vs_compare = f', generate / compare {seconds["compare"] / seconds["generate"]:.2f}x' \
            if other else ''
        print(f'16 prompts x {new_tokens} new tokens: {speeds}; '
              f'generate / recompute {seconds["recompute"] / seconds["generate"]:.1f}x{vs_compare}')


def one_stream(url, model, prompt, max_new_tokens, temperature, barrier, results, i):
    """A thread's work: once all are ready, streams one answer from serve.py; results[i] =
    (seconds to the first token, answer tokens, seconds from the first token to the last)."""
    barrier.wait()
    host, port = url.removeprefix('http://').rstrip('/').split(':')
    conn, start, first = http.client.HTTPConnection(host, int(port)), time.perf_counter(), None
    conn.request('POST', '/v1/chat/completions', json.dumps(dict(
        model=model, messages=[dict(role='user', content=prompt)], max_tokens=max_new_tokens,
        temperature=temperature, stream=True, stream_options=dict(include_usage=True))))
    tokens = 0
    for line in conn.getresponse():
        event = json.loads(line[6:]) if line.startswith(b'data: {') else {}
        if first is None and event.get('choices') and event['choices'][0]['delta'].get('content'):
            first = time.perf_counter()
        tokens = event['usage']['completion_tokens'] if event.get('usage') else tokens
    results[i] = (first - start, tokens, time.perf_counter() - first)


def serve_speed(url, model, data_dir, streams, max_new_tokens, temperature, rounds):
    """For each number of concurrent streams: the median time to first token, each stream's
    tokens/s and all streams' tokens/s, over rounds of held-out prompts."""
    prompts = tasks.prompt_set(tasks.load_world(data_dir), 'eval', 64)
    for n in streams:
        firsts, rates, total_tokens, total_seconds = [], [], 0, 0.0
        for r in range(rounds):
            results, barrier = [None] * n, threading.Barrier(n)
            threads = [threading.Thread(target=one_stream, args=(
                url, model, prompts[(r * n + i) % len(prompts)], max_new_tokens, temperature,
                barrier, results, i)) for i in range(n)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            total_seconds += time.perf_counter() - start
            total_tokens += sum(tokens for _, tokens, _ in results)
            firsts += [first for first, _, _ in results]
            rates += [tokens / max(seconds, 1e-9) for _, tokens, seconds in results]
        median_first = sorted(firsts)[len(firsts) // 2]
        print(f'{n:3d} concurrent streams: first token after {median_first:.3f} s (median), '
              f'{sum(rates) / len(rates):,.0f} tokens/s each, '
              f'{total_tokens / total_seconds:,.0f} tokens/s in all '
              f'({total_tokens / rounds / n:.0f} tokens per answer, {rounds} rounds)')


def main():
    config = configure(globals())
    if mode == 'serve':  # (the server's speed: nothing runs here but its clients)
        return serve_speed(url, os.path.basename(ckpt.rstrip('/')), data_dir,
                           [int(n) for n in streams.split(',')], max_new_tokens, temperature,
                           sample_rounds)
    _, _, device, autocast = setup(config['device'], dtype)
    bf16 = isinstance(autocast, torch.autocast)
    peak = peak_flops(device, bf16)
    print(f'{device} ({"bf16 autocast" if bf16 else "fp32"}), {torch.get_num_threads()} threads, '
          f'peak {peak / 1e12:.2f} TFLOP/s assumed')
    if mode == 'train':
        cfg = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer,
                        n_head=n_head, n_embd=n_embd)
        train(cfg, batch_size, rounds, steps_per_round, compile, baseline,
              other_model_py(compare), device, autocast, peak)
    elif mode == 'sample':
        sample(ckpt, data_dir, n_prompts, k, max_new_tokens, temperature, sample_batch_size,
               sample_rounds, other_model_py(compare), device, autocast, peak)
    else:
        sys.exit(f"error: mode must be 'train', 'sample' or 'serve', not {mode!r}")


if __name__ == '__main__':
    main()
