# GPT-2 small (124M parameters with gpt2's 50k vocab) on real text, 8 GPUs:
#   python data/prepare.py --text_files=corpus.txt --tokenizer=gpt2 --out_dir=out/data/mytext
#   torchrun --nproc_per_node=8 pretrain.py config/gpt2_small.py
# 12 sequences x 1024 tokens x 5 micro-steps x 8 GPUs = ~0.5M tokens per iteration (GPT-3
# paper's batch for this size). On one GPU, grad_accum_steps = 40 gives the same batch. On 8 x A100/H100 (bf16, compiled) one iteration takes well under a second.
data_dir = 'out/data/mytext'
out_dir = 'out/pretrain_gpt2_small'
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
batch_size = 12
grad_accum_steps = 5
max_iters = 20000          # ~10B tokens
lr = 6e-4
min_lr = 6e-5
warmup_iters = 700
weight_decay = 0.1
eval_interval = 500
eval_iters = 100
log_interval = 10
