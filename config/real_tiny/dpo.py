batch_size = 4
warmup_iters = 2
eval_interval = 4
max_new_tokens = 16
