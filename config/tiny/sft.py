max_iters = 60
eval_interval = 30
batch_size = 8
lr = 1e-2
n_eval = 10
max_new_tokens = 24
