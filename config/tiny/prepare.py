# The tiny chain (bash run.sh with PRESET=config/tiny, as the tests run it): seconds per stage on any CPU.
n_docs = 400
vocab_size = 300
n_demos = 300
