batch_size = 4
warmup_iters = 2
