# The chain of real data on 2 CPU cores in under 30 minutes (the real files of ../shared/realdata:
# README.md, "Real data, end to end"): the default model (2M parameters, block_size 256) on a
# 2,048-token BPE of the text; answers of up to 160 tokens, rankings whose prompt leaves 64.
vocab_size = 2048
