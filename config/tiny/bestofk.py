n_prompts = 8
k = 2
iters = 4
batch_size = 4
n_eval = 8
eval_k = 4
max_new_tokens = 16
