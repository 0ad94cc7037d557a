"""Run by test_pretrain.py under torchrun: pretrain.py's main() as a user runs it (its own
teardown included), then this rank's parameter checksums written to out_dir/rank<RANK>.json."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pretrain  # noqa: E402

model = pretrain.main()
checksums = [float(p.detach().double().sum()) for p in model.parameters()]
with open(os.path.join(pretrain.out_dir, f"rank{os.environ['RANK']}.json"), 'w') as f:
    json.dump(checksums, f)
