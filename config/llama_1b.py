# A ~1B-parameter model in the spirit of TinyLlama (Zhang et al. 2024), on 8 GPUs, on C4 web text:
#   python data/corpus.py --name=c4 --shards=32     # ~5B tokens (10 GB download, ~24 GB of text)
#   python data/prepare.py --text_files=out/data/raw/c4.txt --tokenizer=gpt2 --out_dir=out/data/c4
#   torchrun --nproc_per_node=8 pretrain.py config/llama_1b.py
# (prepare.py streams the text: a few hundred MB of RAM, and num_proc processes tokenize it.)
#
# Parameters, 1,013,786,624 (GPT(GPTConfig(...)).num_params()): per layer attention qkv + proj without
# biases 4 x 2048^2 = 16,777,216, SwiGLU gate, up, down with hidden 64 * ceil(8 * 2048 / 3 / 64) = 5504:
# 3 x 2048 x 5504 = 33,816,576, two RMSNorm weights 4096: 50,597,888 x 18 layers = 910,761,984; the
# tied embedding 50304 x 2048 = 103,022,592 and the final norm 2048. (TinyLlama's 22 layers of this
# width with grouped-query attention make 1.1B; here, with full attention, 22 layers would be 1.22B.)
#
# Memory per GPU (plain DDP: every GPU holds all of it; bf16 autocast; estimates):
#   fp32 weights + grads + AdamW's two fp32 moments, 16 bytes/param    16.2 GB
#   DDP's gradient buckets (4 bytes/param) + bf16 copies of the weights   6.1 GB
#   activations per 2048-token sequence: ~60 x n_embd bytes per token per layer in eager mode (fp32
#     residual and norms 16d, bf16 matmul inputs and flash attention's q, k, v, out ~14d, fp32 q, k
#     for RoPE 8d, SwiGLU's four hidden-wide tensors 21.5d) = 4.5 GB, + the fp32 log-softmax over
#     the vocabulary 0.4 GB: 4.9 GB per sequence, x batch_size 4                19.8 GB
#   for a moment at the loss, the logits in bf16 and fp32 and their gradient        4.1 GB
#   in all ~46 GB of 80 (torch.compile keeps fewer activations): DDP fits. batch_size = 8 with
#   grad_accum_steps = 8 (the same tokens) comes to ~70 GB, a tight fit.
# Batch: 4 sequences x 2048 tokens x 16 micro-steps x 8 GPUs = 1,048,576 tokens per iteration (~1M).
# Time: 6N = 6.1 GFLOPs per token; at 40% MFU (40% of 989 TFLOP/s per H100) 8 GPUs do ~520k tokens/s,
# 45B tokens per day, ~2 s per iteration: these 20,000 iterations (21B tokens, ~20 per parameter as
# Chinchilla has it; ~4 passes over 32 shards) take ~11 h. (pretrain.py's mfu also counts attention,
# 12 L d T = 0.9 GFLOPs per token: it reads ~46% at that speed.) A checkpoint (weights + AdamW) is ~12 GB.
data_dir = 'out/data/c4'
out_dir = 'out/pretrain_llama_1b'
n_layer = 18
n_head = 16                # head size 128
n_embd = 2048
block_size = 2048
batch_size = 4
grad_accum_steps = 16
max_iters = 20000          # 21B tokens
lr = 4e-4
min_lr = 4e-5
warmup_iters = 1000
weight_decay = 0.1
grad_clip = 1.0
eval_interval = 500
eval_iters = 20
log_interval = 10
