#!/usr/bin/env bash
# The chain on the tiny world. Extra arguments go to pretrain.py (e.g. --max_iters=100).
# For several processes or GPUs: RUN="torchrun --nproc_per_node=8" bash run.sh
set -euo pipefail
cd "$(dirname "$0")"
RUN=${RUN:-python}
python data/prepare.py
$RUN pretrain.py "$@"
