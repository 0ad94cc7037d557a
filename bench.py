"""
Training throughput: tokens/s and MFU of model.py's GPT for a given config, side by side with a
GPT-2-style model of the same width and depth (the block nanoGPT uses: LayerNorm, learned
positions, GELU MLP), timed in alternating rounds on the same machine so that noise hits both.

  python bench.py                                  # the classroom size on the CPU
  python bench.py --n_layer=12 --n_head=12 --n_embd=768 --block_size=1024 --batch_size=16   # GPU
"""
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import GPT, GPTConfig, configure, flops_per_token, make_optimizer, peak_flops, setup

# -----------------------------------------------------------------------------
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
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in self.qkv(self.ln1(x)).split(C, dim=2))
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT2(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.wte, self.wpe = nn.Embedding(cfg.vocab_size, cfg.n_embd), nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(GPT2Block(cfg.n_embd, cfg.n_head) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=False)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return logits, F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def main():
    configure(globals())
    _, _, dev, autocast = setup(device, dtype)
    cfg = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    models = {'model.py GPT': GPT(cfg)} | ({'GPT-2 style': GPT2(cfg)} if baseline else {})
    x = torch.randint(vocab_size, (batch_size, block_size), device=dev)
    y = torch.randint(vocab_size, (batch_size, block_size), device=dev)
    steps, times = {}, {name: [] for name in models}
    for name, model in models.items():
        model.to(dev).train()
        optimizer = make_optimizer(model, 1e-4, 0.1, dev)
        compiled = torch.compile(model) if compile and dev.startswith('cuda') else model

        def step(compiled=compiled, optimizer=optimizer):
            with autocast:
                loss = compiled(x, y)[1]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        for _ in range(3):  # warm up (and compile)
            step()
        steps[name] = step
    for _ in range(rounds):
        for name, step in steps.items():
            if dev.startswith('cuda'):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(steps_per_round):
                step()
            if dev.startswith('cuda'):
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) / steps_per_round)
    bf16 = isinstance(autocast, torch.autocast)
    peak = peak_flops(dev, bf16)
    print(f'{dev} ({"bf16 autocast" if bf16 else "fp32"}), {torch.get_num_threads()} threads, batch {batch_size} x {block_size}, '
          f'peak {peak / 1e12:.2f} TFLOP/s assumed')
    tok_s = {}
    for name, model in models.items():
        tok_s[name] = batch_size * block_size / statistics.median(times[name])
        flops = flops_per_token(model) * tok_s[name]
        print(f'{name:14s} {model.num_params() / 1e6:7.2f}M params  {tok_s[name]:>10,.0f} tokens/s  '
              f'{flops / 1e12:7.3f} TFLOP/s  MFU {100 * flops / peak:5.1f}%' + ('' if math.isfinite(peak) else ' (unknown peak)'))
    if baseline:
        print(f'ratio model.py / GPT-2 style: {tok_s["model.py GPT"] / tok_s["GPT-2 style"]:.2f}')


if __name__ == '__main__':
    main()
