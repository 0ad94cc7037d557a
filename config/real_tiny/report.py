n_eval = 6
samples = 4
max_new_tokens = 16
n_examples = 2
