max_iters = 40
eval_interval = 20
batch_size = 8
lr = 1e-2
