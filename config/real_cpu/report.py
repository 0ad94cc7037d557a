n_eval = 1000               # all held-out prompts that fit (fewer than this)
samples = 4
max_new_tokens = 160
