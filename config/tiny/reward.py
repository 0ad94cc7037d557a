n_prompts = 16
k = 3
n_eval = 8
max_new_tokens = 16
batch_size = 4
sample_batch = 6
ckpt_interval = 4
