"""Pretraining: next-token prediction on plain text, from scratch; run again, it goes on (README).

  python data/prepare.py && python pretrain.py    # the tiny world on a laptop CPU, 3-4 minutes
  torchrun --nproc_per_node=8 pretrain.py config/gpt2_small.py --data_dir=out/data/mytext
"""
import os
import sys
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
from tqdm import tqdm

from data.prepare import get_batch, load_tokens
from model import (GPT, GPTConfig, all_mean, configure, flops_per_token, keep_metrics,
                   load_checkpoint, load_tokenizer, log_row, lr_at, make_optimizer, peak_flops,
                   raw_model, save_checkpoint, set_lr, setup, teardown, wrap)

# ----------------------------------------------------------------------------- config
data_dir = 'out/data/world'   # written by data/prepare.py
out_dir = 'out/pretrain'
init = 'resume'               # 'resume': from out_dir/ckpt.pt if it exists; 'scratch': start over
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
grad_accum_steps = 1          # micro-steps per iteration per process (torchrun N: N times this)
max_iters = 400
lr = 3e-3
min_lr = 3e-4
warmup_iters = 30
lr_decay_iters = 0            # the cosine reaches min_lr here; 0: at max_iters
weight_decay = 0.1
grad_clip = 1.0
# system
device = 'auto'               # 'auto', 'cpu', 'cuda', 'mps'
dtype = 'auto'                # 'auto' (bfloat16 where the chip has it), 'float32', 'bfloat16'
compile = True                # torch.compile on CUDA (on CPU it compiles longer than these runs)
seed = 1337
# -----------------------------------------------------------------------------


def load_or_create(ckpt_path, init, model_args, lr, weight_decay, device):
    """(model, optimizer, iteration to start at): new, or resumed from ckpt_path."""
    if init == 'scratch' or not os.path.exists(ckpt_path):
        model = GPT(GPTConfig(**model_args)).to(device)
        return model, make_optimizer(model, lr, weight_decay, device), 0
    model, ckpt = load_checkpoint(ckpt_path, 'python pretrain.py', device)
    if any(ckpt['model_args'][k] != v for k, v in model_args.items()):
        sys.exit(f'error: {ckpt_path} holds a model with {ckpt["model_args"]}, not {model_args}: '
                 f'pass --init=scratch to start over, or another --out_dir')
    optimizer = make_optimizer(model, lr, weight_decay, device)
    optimizer.load_state_dict(ckpt['optimizer'])
    return model, optimizer, ckpt['iter_num']


@torch.no_grad()
def estimate_loss(model, splits, iters, batch_size, block_size, rank, world_size, device, autocast):
    """Each split's mean loss, on the same batches every time, averaged over the processes."""
    model.eval()
    means = []
    for tokens in splits:
        batches = [get_batch(tokens, batch_size, block_size, 10**9 + k * world_size + rank, device)
                   for k in range(iters)]
        with autocast:
            losses = torch.stack([model(x, y)[1] for x, y in batches])
        means.append(all_mean(losses.mean()))  # (one sync with the GPU, not one per batch)
    model.train()
    return means


def print_samples(model, tokenizer, n_samples, block_size, autocast):
    """n_samples texts sampled from <|endoftext|>, one a line."""
    enc = load_tokenizer(tokenizer)
    eot = enc.encode_single_token('<|endoftext|>')
    print('samples:')
    with autocast:
        tokens, lengths = model.eval().generate([[eot]] * n_samples, min(120, block_size - 1),
                                                temperature=0.8, top_k=50, stop_token=eot)
    for row, n in zip(tokens.tolist(), lengths.tolist()):
        print('-', enc.decode([t for t in row[:n] if t < enc.n_vocab and t != eot]))


def main():
    config = configure(globals())
    rank, world_size, device, autocast = setup(config['device'], dtype, seed)
    if init not in ('resume', 'scratch'):
        sys.exit(f"error: init must be 'resume' or 'scratch', not {init!r}")
    train_tokens, meta = load_tokens(data_dir, 'train', block_size)
    val_tokens, _ = load_tokens(data_dir, 'val', block_size)
    # the model: new, or the one in out_dir/ckpt.pt
    model_args = dict(vocab_size=64 * -(-meta['vocab_size'] // 64),  # a multiple of 64
                      block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    ckpt_path, log_path = (os.path.join(out_dir, name) for name in ('ckpt.pt', 'metrics.jsonl'))
    model, optimizer, start_iter = load_or_create(ckpt_path, init, model_args, lr, weight_decay,
                                                  device)
    tokens_per_iter = batch_size * block_size * grad_accum_steps * world_size
    if rank == 0:
        os.makedirs(out_dir, exist_ok=True)
        print(f'{model.num_params() / 1e6:.2f}M parameters, {world_size} process(es) on {device}, '
              f'{tokens_per_iter:,} tokens per iteration'
              + (f', resuming at iteration {start_iter}' if start_iter else ''))
        keep_metrics(log_path, start_iter)  # what the resumed run will not write again
    model = wrap(model, device, compile)  # compiled on CUDA, then DDP under torchrun
    peak = peak_flops(device, isinstance(autocast, torch.autocast)) * world_size
    bar = tqdm(total=max_iters, initial=start_iter, desc='pretrain', disable=rank != 0,
               dynamic_ncols=True)
    t_last, it_last = time.time(), start_iter
    for it in range(start_iter, max_iters + 1):
        # evaluate on both splits, and checkpoint
        if it % eval_interval == 0 or it == max_iters:
            train_loss, val_loss = estimate_loss(model, (train_tokens, val_tokens), eval_iters,
                                                 batch_size, block_size, rank, world_size, device,
                                                 autocast)
            if rank == 0:
                bar.write(f'iter {it}: train loss {train_loss:.4f}, val loss {val_loss:.4f}')
                log_row(log_path, dict(iter=it, train_loss=train_loss, val_loss=val_loss))
                if it > start_iter:
                    save_checkpoint(ckpt_path, model, optimizer=optimizer.state_dict(), iter_num=it,
                                    config=config, tokenizer=meta['tokenizer'], stage='pretrain',
                                    val_loss=val_loss)
            t_last, it_last = time.time(), it  # (evaluation time is not training time)
        if it == max_iters:
            break
        # set the learning rate: a warmup, then a cosine down to min_lr
        step_lr = lr_at(it, lr, min_lr, warmup_iters, lr_decay_iters or max_iters)
        set_lr(optimizer, step_lr)
        # forward and backward, the gradients accumulating over the micro-steps
        loss_sum = 0.0
        for micro in range(grad_accum_steps):
            batch_seed = seed + 100_000 * it + rank * grad_accum_steps + micro  # over all ranks
            x, y = get_batch(train_tokens, batch_size, block_size, batch_seed, device)
            sync = micro == grad_accum_steps - 1 or not dist.is_initialized()  # DDP: the last only
            with (nullcontext() if sync else model.no_sync()), autocast:
                loss = model(x, y)[1] / grad_accum_steps
            loss.backward()
            loss_sum += loss.detach()
        # clip the gradients, step the optimizer
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        bar.update()
        # log (the loss of iteration `it` is that of the weights after `it` updates)
        if rank == 0 and it % log_interval == 0:
            batch_loss = float(loss_sum)  # the one sync with the GPU in log_interval iterations
            tok_per_s = tokens_per_iter * (it + 1 - it_last) / (time.time() - t_last)
            mfu = flops_per_token(model) * tok_per_s / peak
            bar.set_postfix(loss=f'{batch_loss:.3f}', tok_s=f'{tok_per_s:,.0f}', mfu=f'{mfu:.1%}')
            log_row(log_path, dict(iter=it, loss=batch_loss, lr=step_lr, tok_per_s=tok_per_s,
                                   mfu=mfu))
            t_last, it_last = time.time(), it + 1
    bar.close()
    if rank == 0:
        print(f'final val loss {val_loss:.4f}; checkpoint {ckpt_path}')
    if rank == 0 and n_samples > 0:
        print_samples(raw_model(model), meta['tokenizer'], n_samples, block_size, autocast)
    teardown()
    return raw_model(model)


if __name__ == '__main__':
    main()
