"""
Stage 1, supervised fine-tuning (SFT): the pretrained model learns to answer in the chat format
from <prompt, answer> demonstrations. Reads out/pretrain, writes out/sft/ckpt.pt.

  python sft.py                                   # the world's demonstrations (data/prepare.py wrote them)
  torchrun --nproc_per_node=8 sft.py --demos=out/data/alpaca/sft.jsonl --init_from=out/pretrain_gpt2

Demonstrations are JSONL, one conversation per line:
  {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}, ...]}
The loss counts only the assistant's tokens and its <|end|> (model.render_chat): the model
learns to answer, not to write questions. Before training and after, it answers the world's
held-out prompts and the gold judge (data/tasks.py) scores them: the base model prompted with
the chat template, then the SFT model. Run it again after a kill: it goes on from its last
checkpoint (every ckpt_interval iterations) and ends as a run never killed would.
"""
import json
import os
import random
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from data import tasks
from model import (all_gather, all_mean, answer_text, configure, keep_metrics, load_checkpoint, load_tokenizer, lr_at,
                   make_optimizer, raw_model, read_jsonl, render_chat, resumable, sample_answers, save_checkpoint,
                   save_progress, setup, teardown)

# ----------------------------------------------------------------------------- config
init_from = 'out/pretrain'    # the pretrained model
out_dir = 'out/sft'
demos = 'out/data/world/sft.jsonl'  # comma-separated JSONL files of demonstrations
data_dir = 'out/data/world'   # the world whose gold judge evaluates (its meta.json); your own text: no judge
val_fraction = 0.05           # demonstrations held out for the validation loss
n_eval = 400                  # held-out world prompts answered and judged before and after (0: none)
max_new_tokens = 128          # answer length limit when sampling
temperature = 1.0             # sampling temperature of the judged answers (1.0: the model's own distribution)
# optimization
batch_size = 32               # conversations per step per process
max_iters = 600
lr = 2e-3
min_lr = 2e-4
warmup_iters = 20
weight_decay = 0.1
grad_clip = 1.0
eval_interval = 100           # validation loss every this many iterations
ckpt_interval = 100           # a checkpoint every this many iterations: a killed run, started again, goes on from it
# system
device = 'auto'
dtype = 'auto'
compile = True                # torch.compile on CUDA
seed = 1337
# -----------------------------------------------------------------------------


def is_conversation(row):
    """'' for a well-formed demonstration, else what is wrong with it."""
    messages = row['messages']
    if not isinstance(messages, list) or not all(isinstance(m, dict) and m.get('role') in ('user', 'assistant')
                                                 and isinstance(m.get('content'), str) for m in messages):
        return '"messages" must be a list of {"role": "user" or "assistant", "content": text}'
    return '' if any(m['role'] == 'assistant' and m['content'].strip() for m in messages) else 'no assistant turn to learn from'


def tokenize(enc, conversations, block_size):
    """(inputs, targets) per conversation, cut to block_size: the targets are the next tokens,
    -1 where the loss must not look (the prompt, the <|assistant|> cue)."""
    examples = []
    for messages in conversations:
        tokens, trained = render_chat(enc, messages)
        tokens, trained = tokens[:block_size + 1], trained[:block_size + 1]
        examples.append((tokens[:-1], [t if keep else -1 for t, keep in zip(tokens[1:], trained[1:])]))
    return examples


def batches(lengths, batch_size, seed):
    """One epoch of batches (lists of indices) of examples of these lengths, bucketed by length:
    shuffle, sort each run of 32 batches by length, cut it into batches, shuffle the batches.
    Little padding, random order (reward.py uses it too)."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    out = []
    for i in range(0, len(order), 32 * batch_size):
        run = sorted(order[i:i + 32 * batch_size], key=lambda j: lengths[j])
        out += [run[k:k + batch_size] for k in range(0, len(run), batch_size)]
    rng.shuffle(out)
    return out


def collate(examples, ids, device):
    """A batch padded on the right to its longest example (padding: token 0, target -1)."""
    longest = max(len(examples[i][0]) for i in ids)
    x = torch.tensor([examples[i][0] + [0] * (longest - len(examples[i][0])) for i in ids], device=device)
    y = torch.tensor([examples[i][1] + [-1] * (longest - len(examples[i][1])) for i in ids], device=device)
    return x, y


def finetune(model, examples, iters, lr, batch_size, autocast, device, min_lr=0.0, warmup_iters=0,
             weight_decay=0.1, grad_clip=1.0, seed=0, compile=False, evaluate=None, eval_interval=0, desc='sft',
             save=None, ckpt_interval=0, start=0, optimizer_state=None):
    """The SFT loop (bestofk.py uses it too): AdamW on the masked next-token loss, warmup + cosine
    learning rate, length-bucketed batches, each rank its own batches, gradients averaged by DDP.
    evaluate(it, model) runs every eval_interval iterations; save(it, optimizer) every ckpt_interval
    iterations and after the last. A killed run goes on at iteration `start` with the optimizer state
    it saved: the batches of an iteration depend only on its number, so it trains as if never killed."""
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    optimizer = make_optimizer(model, lr, weight_decay, device)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    trained = torch.compile(model) if compile and device.startswith('cuda') else model
    if dist.is_initialized():
        trained = DDP(trained, device_ids=[torch.device(device).index] if device.startswith('cuda') else None)
    epochs, n_batches = {}, max(1, len(examples) // batch_size)
    bar = tqdm(range(start, iters), desc=desc, initial=start, total=iters, disable=rank != 0, dynamic_ncols=True)
    for it in bar:
        if evaluate and eval_interval and it % eval_interval == 0 and it > 0:
            evaluate(it, raw_model(model))
        number = it * world_size + rank  # this rank's batch, counted over all ranks
        epoch = number // n_batches
        if epoch not in epochs:
            epochs = {epoch: batches([len(x) for x, _ in examples], batch_size, seed + epoch)}
        x, y = collate(examples, epochs[epoch][number % n_batches], device)
        for group in optimizer.param_groups:
            group['lr'] = lr_at(it, lr, min_lr, warmup_iters, iters)
        with autocast:
            loss = trained(x, y)[1]
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(trained.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if it % 10 == 0:
            bar.set_postfix(loss=f'{loss.item():.3f}')
        if save and ((ckpt_interval and (it + 1) % ckpt_interval == 0) or it + 1 == iters):
            save(it + 1, optimizer)


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
    return total / max(count, 1)


def judge(model, enc, world, prompts, autocast, desc):
    """Answers to the held-out prompts (each rank a share), sampled with the KV cache, and the gold
    judge's summary of them. Returns (summary, prompts, answers) in the same order on every rank."""
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    mine = prompts[rank::world_size]
    with autocast:
        tokens = sample_answers(model.eval(), enc, mine, max_new_tokens, temperature, progress=desc if rank == 0 else None)
    pairs = all_gather(zip(mine, [answer_text(enc, t) for t in tokens]))
    model.train()
    return tasks.summarize(world, *zip(*pairs)), [p for p, _ in pairs], [a for _, a in pairs]


def main():
    config = configure(globals())
    rank, world_size, dev, autocast = setup(device, dtype, seed)
    master = rank == 0
    model, ckpt = load_checkpoint(os.path.join(init_from, 'ckpt.pt'), 'python pretrain.py', dev)
    inputs = [os.path.join(init_from, 'ckpt.pt')] + demos.split(',')
    resumed = resumable(out_dir, config, inputs, dev)  # a killed run of this command: go on from its checkpoint
    if resumed:
        model.load_state_dict(resumed['model'])
    enc = load_tokenizer(ckpt['tokenizer'])
    block_size = model.config.block_size
    if demos.endswith('world/sft.jsonl') and not os.path.exists(demos):
        sys.exit(f'error: {demos} not found: run python data/prepare.py')
    conversations = [row['messages'] for row in read_jsonl(demos, is_conversation, '{"messages": [...]}')]
    if not conversations:
        sys.exit(f'error: {demos}: no demonstrations')
    random.Random(seed).shuffle(conversations)
    n_val = int(len(conversations) * val_fraction)
    train_set = tokenize(enc, conversations[n_val:], block_size)
    val_set = tokenize(enc, conversations[:n_val], block_size)
    world = tasks.load_world(data_dir)
    eval_prompts = tasks.prompt_set(world, 'eval', n_eval) if world and n_eval else []
    start = resumed['iter_num'] if resumed else 0
    if master:
        os.makedirs(out_dir, exist_ok=True)
        keep_metrics(os.path.join(out_dir, 'metrics.jsonl'), start)
        lengths = [len(x) for x, _ in train_set]
        padded = sum(max(lengths[i] for i in b) * len(b) for b in batches(lengths, batch_size, seed))
        real = sum(lengths)
        print(f'{len(train_set):,} train and {n_val:,} val conversations from {demos}; '
              f'{sum(t != -1 for _, y in train_set for t in y) / real:.0%} of the tokens are trained on; '
              f'bucketed batches pad {1 - real / padded:.1%}' + (f'; resuming at iteration {start}' if resumed else ''))

    def evaluate(it, model, label):
        row = dict(iter=it, val_loss=all_mean(val_loss(model.eval(), val_set, batch_size, autocast, dev)))
        model.train()
        text = f'iter {it}: val loss {row["val_loss"]:.4f}'
        if eval_prompts and label:
            summary, prompts, answers = judge(model, enc, world, eval_prompts, autocast, f'answering ({label})')
            row.update(gold=summary['gold'], gold_stderr=summary['gold_stderr'], kinds=summary['kinds'], splits=summary['splits'],
                       criteria=summary['criteria'])
            text += f'\n{label}: ' + tasks.report(summary)
            if master:
                with open(os.path.join(out_dir, f'answers_{label}.jsonl'), 'w') as f:
                    f.writelines(json.dumps(dict(prompt=p, answer=a, gold=s)) + '\n'
                                 for p, a, s in zip(prompts, answers, summary['scores']))
        if master:
            tqdm.write(text)
            with open(os.path.join(out_dir, 'metrics.jsonl'), 'a') as f:
                f.write(json.dumps(row) + '\n')
        return row

    t0 = time.time() - (resumed['train_time'] if resumed else 0)
    meta = dict(config=config, tokenizer=ckpt['tokenizer'], stage='sft', data_dir=data_dir)
    before = resumed['before'] if resumed else evaluate(0, model, 'base')

    def save(it, optimizer):  # (the last one is saved before the long evaluation)
        save_progress(os.path.join(out_dir, 'ckpt.pt'), model, inputs, **meta, iter_num=it,
                      optimizer=optimizer.state_dict(), before=before, train_time=time.time() - t0)

    finetune(model, train_set, max_iters, lr, batch_size, autocast, dev, min_lr, warmup_iters, weight_decay,
             grad_clip, seed, compile, lambda it, m: evaluate(it, m, None), eval_interval, save=save,
             ckpt_interval=ckpt_interval, start=start, optimizer_state=resumed['optimizer'] if resumed else None)
    after = evaluate(max_iters, model, 'sft')
    if master:
        save_checkpoint(os.path.join(out_dir, 'ckpt.pt'), model, **meta, iter_num=max_iters, metrics=after,
                        train_time=time.time() - t0)
        if 'gold' in after:
            print(f'gold score on {len(eval_prompts)} held-out prompts: base model {before["gold"]:.3f} '
                  f'± {before["gold_stderr"]:.3f} -> SFT {after["gold"]:.3f} ± {after["gold_stderr"]:.3f}')
        print(f'checkpoint {out_dir}/ckpt.pt ({time.time() - t0:.0f} s)')
    teardown()


if __name__ == '__main__':
    main()
