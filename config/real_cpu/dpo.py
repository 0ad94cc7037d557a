max_new_tokens = 64         # the room a ranking's prompt must leave for its answer (model.fitting)
eval_interval = 16
