batch_size = 4
eval_interval = 2
n_eval = 8
max_new_tokens = 16
