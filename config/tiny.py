# A smoke test: seconds on any CPU. python pretrain.py config/tiny.py
out_dir = 'out/pretrain_tiny'
n_layer = 2
n_head = 2
n_embd = 64
block_size = 128
batch_size = 8
max_iters = 100
eval_interval = 50
eval_iters = 5
