# about 7 passes over the 950 Alpaca demonstrations (more overfits them)
max_iters = 200
eval_interval = 100
n_eval = 0
max_new_tokens = 160
