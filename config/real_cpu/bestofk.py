n_prompts = 128
k = 4
iters = 60
batch_size = 16
n_eval = 1000               # all held-out prompts that fit (fewer than this)
eval_k = 4
max_new_tokens = 160
