iters = 2
n_prompts = 16
n_eval = 4
eval_interval = 2
batch_size = 8
minibatch_size = 4
ppo_epochs = 1
max_new_tokens = 16
