"""Run by test_pretrain.py under torchrun: pretrain.py's main(), then every rank's parameter
checksums gathered on rank 0 and written to out_dir/rank_params.json."""
import json
import os
import sys

import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pretrain  # noqa: E402

pretrain.teardown = lambda: None  # keep the process group for the check below
model = pretrain.main()
checksums = [float(p.double().sum()) for p in model.parameters()]
gathered = [None] * dist.get_world_size()
dist.all_gather_object(gathered, checksums)
if dist.get_rank() == 0:
    with open(os.path.join(pretrain.out_dir, 'rank_params.json'), 'w') as f:
        json.dump(gathered, f)
dist.barrier()
dist.destroy_process_group()
