iters = 30
batch_size = 32
minibatch_size = 8
n_eval = 1000               # all held-out prompts that fit (fewer than this)
eval_interval = 10
max_new_tokens = 160
