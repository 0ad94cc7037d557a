# A smoke test of pretraining on real text: seconds on any CPU.
n_layer = 1
n_head = 2
n_embd = 32
block_size = 128
batch_size = 8
max_iters = 30
eval_interval = 30
eval_iters = 2
n_samples = 1
lr = 1e-2
warmup_iters = 2
