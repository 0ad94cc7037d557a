n_prompts = 8
k = 2
iters = 4
batch_size = 4
n_eval = 4
eval_k = 2
max_new_tokens = 16
