"""
Pretraining: next-token prediction on plain text, from scratch. Writes out/pretrain/ckpt.pt.

  python data/prepare.py && python pretrain.py          # the tiny world on a laptop CPU, 3-4 minutes
  torchrun --nproc_per_node=8 pretrain.py config/gpt2_small.py --data_dir=out/data/mytext

Run it again after a kill (or with a larger --max_iters): it continues from the last checkpoint.
"""
import json
import os
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from model import (GPT, GPTConfig, all_mean, configure, flops_per_token, keep_metrics, load_checkpoint, load_tokenizer,
                   lr_at, make_optimizer, peak_flops, raw_model, save_checkpoint, setup, teardown)

# ----------------------------------------------------------------------------- config
data_dir = 'out/data/world'   # written by data/prepare.py
out_dir = 'out/pretrain'
init = 'resume'               # 'resume': continue from out_dir/ckpt.pt if it exists; 'scratch': start over
eval_interval = 100           # evaluate and checkpoint every this many iterations
eval_iters = 10               # batches per loss estimate
log_interval = 10
n_samples = 3                 # samples printed at the end
# model
n_layer = 4
n_head = 4
n_embd = 192
block_size = 256
# optimization
batch_size = 16               # sequences per micro-step per process
grad_accum_steps = 1          # micro-steps per iteration on each process (torchrun N: N times the batch)
max_iters = 400
lr = 3e-3
min_lr = 3e-4
warmup_iters = 30
lr_decay_iters = 0            # the cosine reaches min_lr here; 0: at max_iters
weight_decay = 0.1
grad_clip = 1.0
# system
device = 'auto'               # 'auto', 'cpu', 'cuda', 'mps'
dtype = 'auto'                # 'auto' (bfloat16 where the chip computes it natively, else float32), 'float32', 'bfloat16'
compile = True                # torch.compile on CUDA (on CPU it compiles longer than these runs last)
seed = 1337
# -----------------------------------------------------------------------------


def load_tokens(data_dir, split, block_size):
    """The token file as a read-only memory map, checked for being there, whole and long enough."""
    meta_path, path = os.path.join(data_dir, 'meta.json'), os.path.join(data_dir, f'{split}.bin')
    if not os.path.exists(meta_path) or not os.path.exists(path):
        sys.exit(f'error: {path} not found: run python data/prepare.py first')
    with open(meta_path) as f:
        meta = json.load(f)
    itemsize = np.dtype(meta['dtype']).itemsize
    size = os.path.getsize(path)
    if size % itemsize:
        sys.exit(f'error: {path} is truncated ({size} bytes, not a multiple of {itemsize}): run python data/prepare.py again')
    if size // itemsize < block_size + 2:
        sys.exit(f'error: {path} holds {size // itemsize} tokens, fewer than block_size + 2 = {block_size + 2}')
    return np.memmap(path, dtype=meta['dtype'], mode='r'), meta


def get_batch(tokens, batch_size, block_size, batch_seed, device):
    """Random windows of the token stream; the inputs x and the targets y, shifted by one.
    Drawn from a generator seeded per batch, so a resumed run sees the batches it would have seen."""
    starts = torch.randint(len(tokens) - block_size - 1, (batch_size,), generator=torch.Generator().manual_seed(batch_seed))
    xy = torch.from_numpy(np.stack([tokens[s:s + block_size + 1] for s in starts.tolist()]).astype(np.int64))
    xy = xy.pin_memory().to(device, non_blocking=True) if device.startswith('cuda') else xy.to(device)
    return xy[:, :-1], xy[:, 1:]


def main():
    config = configure(globals())
    rank, world_size, dev, autocast = setup(device, dtype, seed)
    master = rank == 0
    if init not in ('resume', 'scratch'):
        sys.exit(f"error: init must be 'resume' or 'scratch', not {init!r}")
    train_tokens, meta = load_tokens(data_dir, 'train', block_size)
    val_tokens, _ = load_tokens(data_dir, 'val', block_size)

    # the model: new, or the one in out_dir/ckpt.pt
    model_args = dict(vocab_size=64 * -(-meta['vocab_size'] // 64),  # rounded up to a multiple of 64
                      block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    ckpt_path = os.path.join(out_dir, 'ckpt.pt')
    start_iter, ckpt = 0, None
    if init == 'resume' and os.path.exists(ckpt_path):
        model, ckpt = load_checkpoint(ckpt_path, 'python pretrain.py', dev)
        if any(ckpt['model_args'][k] != v for k, v in model_args.items()):
            sys.exit(f'error: {ckpt_path} holds a model with {ckpt["model_args"]}, not {model_args}: '
                     f'pass --init=scratch to start over, or another --out_dir')
        start_iter = ckpt['iter_num']
    else:
        model = GPT(GPTConfig(**model_args)).to(dev)
    optimizer = make_optimizer(model, lr, weight_decay, dev)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt['optimizer'])
    tokens_per_iter = batch_size * block_size * grad_accum_steps * world_size
    if master:
        os.makedirs(out_dir, exist_ok=True)
        print(f'{model.num_params() / 1e6:.2f}M parameters, {world_size} process(es) on {dev}, '
              f'{tokens_per_iter:,} tokens per iteration'
              + (f', resuming at iteration {start_iter}' if start_iter else ''))
        keep_metrics(os.path.join(out_dir, 'metrics.jsonl'), start_iter)  # what the resumed run will not write again
    if compile and dev.startswith('cuda'):
        model = torch.compile(model)
    ddp = dist.is_initialized()
    if ddp:
        model = DDP(model, device_ids=[torch.device(dev).index] if dev.startswith('cuda') else None)

    def log(**row):
        with open(os.path.join(out_dir, 'metrics.jsonl'), 'a') as f:
            f.write(json.dumps(row) + '\n')

    @torch.no_grad()
    def estimate_loss():
        model.eval()
        out = {}
        for split, tokens in (('train', train_tokens), ('val', val_tokens)):
            losses = []
            for k in range(eval_iters):  # the same batches at every evaluation
                x, y = get_batch(tokens, batch_size, block_size, 10**9 + k * world_size + rank, dev)
                with autocast:
                    losses.append(model(x, y)[1])
            out[split] = all_mean(torch.stack(losses).mean())  # (one sync with the GPU, not one per batch)
        model.train()
        return out

    decay_iters = lr_decay_iters or max_iters
    model_flops_per_token = flops_per_token(model)
    peak = peak_flops(dev, isinstance(autocast, torch.autocast)) * world_size
    bar = tqdm(total=max_iters, initial=start_iter, desc='pretrain', disable=not master, dynamic_ncols=True)
    t_last, it_last = time.time(), start_iter
    for it in range(start_iter, max_iters + 1):
        if it % eval_interval == 0 or it == max_iters:
            losses = estimate_loss()
            if master:
                bar.write(f'iter {it}: train loss {losses["train"]:.4f}, val loss {losses["val"]:.4f}')
                log(iter=it, train_loss=losses['train'], val_loss=losses['val'])
                if it > start_iter:
                    save_checkpoint(ckpt_path, model, optimizer=optimizer.state_dict(), iter_num=it, config=config,
                                    tokenizer=meta['tokenizer'], stage='pretrain', val_loss=losses['val'])
            t_last, it_last = time.time(), it  # (evaluation time is not training time)
        if it == max_iters:
            break

        step_lr = lr_at(it, lr, min_lr, warmup_iters, decay_iters)
        for group in optimizer.param_groups:
            group['lr'] = step_lr
        loss_sum = 0.0
        for micro in range(grad_accum_steps):
            batch_seed = seed + 100_000 * it + rank * grad_accum_steps + micro  # the micro-batch's number, over all ranks
            x, y = get_batch(train_tokens, batch_size, block_size, batch_seed, dev)
            last = micro == grad_accum_steps - 1  # DDP averages gradients over processes only after the last micro-step
            with (nullcontext() if last or not ddp else model.no_sync()), autocast:
                loss = model(x, y)[1] / grad_accum_steps
            loss.backward()
            loss_sum += loss.detach()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        bar.update()

        if master and it % log_interval == 0:  # (the loss of iteration `it` is that of the weights after `it` updates)
            loss_value = float(loss_sum)  # the one sync with the GPU in log_interval iterations
            tok_per_s = tokens_per_iter * (it + 1 - it_last) / (time.time() - t_last)
            mfu = model_flops_per_token * tok_per_s / peak
            bar.set_postfix(loss=f'{loss_value:.3f}', tok_s=f'{tok_per_s:,.0f}', mfu=f'{100 * mfu:.1f}%')
            log(iter=it, loss=loss_value, lr=step_lr, tok_per_s=tok_per_s, mfu=mfu)
            t_last, it_last = time.time(), it + 1
    bar.close()

    if master:
        enc = load_tokenizer(meta['tokenizer'])
        eot = enc.encode_single_token('<|endoftext|>')
        print(f'final val loss {losses["val"]:.4f}; checkpoint {ckpt_path}')
    if master and n_samples > 0:
        print('samples:')
        with autocast:
            tokens, lengths = raw_model(model).eval().generate([[eot]] * n_samples, min(120, block_size - 1),
                                                               temperature=0.8, top_k=50, stop_token=eot)
        for row, n in zip(tokens.tolist(), lengths.tolist()):
            print('-', enc.decode([t for t in row[:n] if t < enc.n_vocab and t != eot]))
    teardown()
    return raw_model(model)


if __name__ == '__main__':
    main()
