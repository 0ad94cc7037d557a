# GPT-2 small's shape (123.6M parameters with gpt2's vocab, 50304 rounded) on one GPU, on C4 web text:
#   python data/corpus.py --name=c4 --shards=4      # ~0.6B tokens (1.2 GB download, ~3 GB of text)
#   python data/prepare.py --text_files=out/data/raw/c4.txt --tokenizer=gpt2 --out_dir=out/data/c4
#   python pretrain.py config/gpt2_small_1gpu.py
# Batch: 16 sequences x 1024 tokens x 32 micro-steps = 524,288 tokens per iteration (~0.5M, the GPT-3
# paper's batch for this size, as config/gpt2_small.py gets from 8 GPUs with 5 micro-steps each).
# Memory (bf16 autocast, estimates): fp32 weights + grads + AdamW's two moments, 16 bytes/param = 2.0 GB;
# activations ~0.77 GB per sequence (60 x n_embd bytes per token per layer, eager; plus the fp32
# log-softmax over the vocabulary), x 16 = 12 GB; ~8 GB more for a moment at the loss (the logits in
# bf16 and fp32): ~23 GB in all, for 40 and 80 GB cards. On a 24 GB card: batch_size = 8, grad_accum_steps = 64.
# Time: 6N = 0.74 GFLOPs per token; at 40% MFU on an H100 (40% of 989 TFLOP/s) ~530k tokens/s, ~1 s per
# iteration, 46B tokens per day; these 5000 iterations (2.6B tokens, ~20 per parameter as Chinchilla
# has it, ~4 passes over 4 shards: repeating up to ~4 epochs costs little, Muennighoff et al. 2023) take ~1.4 h.
# (pretrain.py's mfu also counts attention, 12 L d T FLOPs per token: it reads ~46% at that speed.)
data_dir = 'out/data/c4'
out_dir = 'out/pretrain_gpt2_small_1gpu'
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
batch_size = 16
grad_accum_steps = 32
max_iters = 5000           # 2.6B tokens
lr = 6e-4
min_lr = 6e-5
warmup_iters = 300
weight_decay = 0.1
eval_interval = 250
eval_iters = 50
log_interval = 10
