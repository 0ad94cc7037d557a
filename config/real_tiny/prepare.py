# The tiny chain of real data (DATA=real PRESET=config/real_tiny bash run.sh, as tests/test_real_data.py runs it
# on small files in the real formats): seconds per stage on any CPU.
vocab_size = 300
