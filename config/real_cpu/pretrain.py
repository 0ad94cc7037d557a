# the default model (4 layers, 192 wide, block_size 256): 400 iterations of 16 x 256 tokens
max_iters = 400
eval_interval = 200
n_samples = 1
