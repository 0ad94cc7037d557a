n_eval = 8
max_new_tokens = 16
