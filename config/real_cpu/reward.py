max_new_tokens = 64         # the room a ranking's prompt must leave for its answer (model.fitting)
epochs = 3
lr = 2e-4                   # a third of the default: from the SFT model, the default overfits noise
min_lr = 2e-5
