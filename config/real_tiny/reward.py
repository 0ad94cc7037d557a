batch_size = 4
warmup_iters = 2
max_new_tokens = 16         # the room a ranking's prompt must leave for its answer (model.fitting)
