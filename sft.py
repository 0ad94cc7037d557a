"""
Stage 1, supervised fine-tuning (SFT): the pretrained model learns to answer in the chat format
from demonstrations, JSONL of {"messages": [{"role": "user", "content": "..."}, ...]}; the gold
judge scores its answers to held-out prompts before and after. Reads out/pretrain, writes
out/sft/ckpt.pt. README.md: "SFT", "Bring your own data", "Kill it, run it again".

  python sft.py                 # the world's demonstrations (data/prepare.py wrote them)
  torchrun --nproc_per_node=8 sft.py --demos=out/data/alpaca/sft.jsonl --init_from=out/pretrain_gpt2
"""
import os
import random
import sys
import time

import torch
from tqdm import tqdm

from data import tasks
from data.formats import read_jsonl, write_jsonl
from model import (all_mean, answer_prompts, answer_text, batches, collate, configure, finetune,
                   keep_metrics, load_checkpoint, load_tokenizer, log_row, make_optimizer,
                   resumable, save_checkpoint, save_progress, setup, teardown, tokenize, wrap)

# ----------------------------------------------------------------------------- config
init_from = 'out/pretrain'    # the pretrained model
out_dir = 'out/sft'
demos = 'out/data/world/sft.jsonl'  # comma-separated JSONL files of demonstrations
data_dir = 'out/data/world'   # the world whose gold judge evaluates (meta.json); your text: none
val_fraction = 0.05           # demonstrations held out for the validation loss
n_eval = 400                  # held-out world prompts judged before and after (0: none)
max_new_tokens = 128          # answer length limit when sampling
temperature = 1.0             # of the judged answers (1.0: the model's own distribution)
# optimization
batch_size = 32               # conversations per step per process
max_iters = 600
lr = 2e-3
min_lr = 2e-4
warmup_iters = 20
weight_decay = 0.1
grad_clip = 1.0
eval_interval = 100           # validation loss every this many iterations
ckpt_interval = 100           # checkpoint every this many iterations: a killed run goes on from it
# system
device = 'auto'
dtype = 'auto'
compile = True                # torch.compile on CUDA
seed = 1337
# -----------------------------------------------------------------------------


def is_conversation(row):
    """'' for a well-formed demonstration, else what is wrong with it."""
    messages = row['messages']
    if not isinstance(messages, list) or not all(
            isinstance(m, dict) and m.get('role') in ('user', 'assistant')
            and isinstance(m.get('content'), str) for m in messages):
        return '"messages" must be a list of {"role": "user" or "assistant", "content": text}'
    answered = any(m['role'] == 'assistant' and m['content'].strip() for m in messages)
    return '' if answered else 'no assistant turn to learn from'


@torch.no_grad()
def val_loss(model, examples, batch_size, autocast, device):
    """The masked loss over examples, weighted by their trained tokens, averaged over ranks."""
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        x, y = collate(examples, range(i, min(i + batch_size, len(examples))), device)
        with autocast:
            loss = model(x, y)[1]
        n = int((y != -1).sum())
        total, count = total + float(loss) * n, count + n
    return all_mean(total / max(count, 1))


def measure(model, it, rank, val_set, batch_size, autocast, device, out_dir, enc, world, prompts,
            max_new_tokens, temperature, label=None):
    """A row of metrics.jsonl, printed too: the validation loss at iteration it and, with a label,
    the gold score of answers to the held-out prompts (written to answers_{label}.jsonl)."""
    row = dict(iter=it, val_loss=val_loss(model.eval(), val_set, batch_size, autocast, device))
    text = f'iter {it}: val loss {row["val_loss"]:.4f}'
    if label and prompts:
        answers = [answer_text(enc, t) for t in answer_prompts(
            model, enc, prompts, max_new_tokens, temperature, autocast, f'answering ({label})')]
        summary = tasks.summarize(world, prompts, answers)
        row.update(tasks.gold_fields(summary))
        text += f'\n{label}: ' + tasks.report(summary)
        if rank == 0:
            scored = zip(prompts, answers, summary['scores'])
            write_jsonl(os.path.join(out_dir, f'answers_{label}.jsonl'),
                        [dict(prompt=p, answer=a, gold=s) for p, a, s in scored])
    if rank == 0:
        tqdm.write(text)
    log_row(os.path.join(out_dir, 'metrics.jsonl'), row)
    model.train()
    return row


def main():
    config = configure(globals())
    rank, world_size, device, autocast = setup(config['device'], dtype, seed)
    model, ckpt = load_checkpoint(os.path.join(init_from, 'ckpt.pt'), 'python pretrain.py', device)
    inputs = [os.path.join(init_from, 'ckpt.pt')] + demos.split(',')
    resumed = resumable(out_dir, config, inputs, device)
    optimizer = make_optimizer(model, lr, weight_decay, device)
    if resumed:  # a killed run of this command: go on from its checkpoint
        model.load_state_dict(resumed['model'])
        optimizer.load_state_dict(resumed['optimizer'])
    enc = load_tokenizer(ckpt['tokenizer'])
    if demos.endswith('world/sft.jsonl') and not os.path.exists(demos):
        sys.exit(f'error: {demos} not found: run python data/prepare.py')
    conversations = [row['messages'] for row in
                     read_jsonl(demos, is_conversation, '{"messages": [...]}')]
    if not conversations:
        sys.exit(f'error: {demos}: no demonstrations')
    random.Random(seed).shuffle(conversations)
    n_val = int(len(conversations) * val_fraction)
    train_set = tokenize(enc, conversations[n_val:], model.config.block_size)
    val_set = tokenize(enc, conversations[:n_val], model.config.block_size)
    world = tasks.load_world(data_dir)
    start = resumed['iter_num'] if resumed else 0
    if rank == 0:
        os.makedirs(out_dir, exist_ok=True)
        keep_metrics(os.path.join(out_dir, 'metrics.jsonl'), start)
        lengths = [len(x) for x, _ in train_set]
        epoch = batches(lengths, batch_size, seed)
        padded = sum(max(lengths[i] for i in b) * len(b) for b in epoch)
        trained = sum(t != -1 for _, y in train_set for t in y) / sum(lengths)
        resuming = f'; resuming at iteration {start}' if resumed else ''
        print(f'{len(train_set):,} train and {n_val:,} val conversations from {demos}; '
              f'{trained:.0%} of the tokens are trained on; '
              f'bucketed batches pad {1 - sum(lengths) / padded:.1%}{resuming}')
    prompts = tasks.prompt_set(world, 'eval', n_eval) if world and n_eval else []
    measuring = dict(rank=rank, val_set=val_set, batch_size=batch_size, autocast=autocast,
                     device=device, out_dir=out_dir, enc=enc, world=world, prompts=prompts,
                     max_new_tokens=max_new_tokens, temperature=temperature)
    t0 = time.time() - (resumed['train_time'] if resumed else 0)
    about = dict(config=config, tokenizer=ckpt['tokenizer'], stage='sft', data_dir=data_dir)
    before = resumed['before'] if resumed else measure(model, 0, label='base', **measuring)
    if eval_interval and 0 < start < max_iters and start % eval_interval == 0:
        measure(model, start, **measuring)  # (the killed run had saved here, not yet measured)
    for it in finetune(wrap(model, device, compile), optimizer, train_set, max_iters, batch_size,
                       lr, min_lr, warmup_iters, autocast, device, grad_clip, seed, start):
        # a checkpoint every ckpt_interval steps and after the last (before the long evaluation)
        if (ckpt_interval and it % ckpt_interval == 0) or it == max_iters:
            save_progress(os.path.join(out_dir, 'ckpt.pt'), model, inputs, **about, iter_num=it,
                          optimizer=optimizer.state_dict(), before=before,
                          train_time=time.time() - t0)
        # the validation loss every eval_interval steps
        if eval_interval and it % eval_interval == 0 and it < max_iters:
            measure(model, it, **measuring)
    after = measure(model, max_iters, label='sft', **measuring)
    if rank == 0:
        save_checkpoint(os.path.join(out_dir, 'ckpt.pt'), model, **about, iter_num=max_iters,
                        metrics=after, train_time=time.time() - t0)
        if 'gold' in after:
            print(f'gold score on {len(prompts)} held-out prompts: base model '
                  f'{before["gold"]:.3f} ± {before["gold_stderr"]:.3f} -> SFT {after["gold"]:.3f} '
                  f'± {after["gold_stderr"]:.3f}')
        print(f'checkpoint {out_dir}/ckpt.pt ({time.time() - t0:.0f} s)')
    teardown()


if __name__ == '__main__':
    main()
