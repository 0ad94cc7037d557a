"""Shared by the stage tests: run a script as a user does, and a tiny chain of checkpoints
(world data -> pretrain -> SFT) made once per test session, on the CPU, in seconds."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from data import world
from data.bpe import save_bpe, train_bpe
from model import SPLIT_PATTERN, load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', 1)) > 1:
    torch.set_num_threads(1)  # one thread per worker (pytest -n 2): no two workers share a core


def run_script(*args, check=True):
    """python script --args in the project root; AssertionError with its output if it fails."""
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'})
    if check and result.returncode != 0:
        raise AssertionError(f'{args} failed:\n{result.stdout}\n{result.stderr}')
    return result


def kill_when(args, ready):
    """Starts `python args` and kills it (SIGKILL) as soon as ready() is true."""
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'})
    while proc.poll() is None and not ready():
        time.sleep(0.002)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL, 'the run ended before the kill'

def fake_python(folder, fail_on=''):
    """A stand-in for python that logs its arguments and threads, and succeeds (run.sh's stages,
    instantly; `python -c`, run.sh's own bookkeeping, runs for real), or fails for a call whose
    arguments match the shell pattern fail_on ('dpo.py*': the DPO stage)."""
    log, fake = folder / 'calls.log', folder / 'fake_python'
    fake.write_text(f'#!/bin/sh\n[ "$1" = -c ] && exec {sys.executable} "$@"\n'
                    f'echo "$@ threads=${{OMP_NUM_THREADS:-all}}" >> {log}\n'
                    + (f'case "$*" in {fail_on}) echo "$1 went wrong" >&2; exit 3;; esac\n' if fail_on else ''))
    fake.chmod(0o755)
    return str(fake), log


@pytest.fixture(scope='session')
def tiny_chain(tmp_path_factory):
    """Directories of a tiny world's data, pretrain and SFT checkpoints (the presets of config/tiny)."""
    root = tmp_path_factory.mktemp('chain')
    paths = {name: str(root / name) for name in ('data', 'pretrain', 'sft')}
    run_script('data/prepare.py', 'config/tiny/prepare.py', f'--out_dir={paths["data"]}')
    run_script('pretrain.py', 'config/tiny/pretrain.py', '--device=cpu', f'--data_dir={paths["data"]}',
               f'--out_dir={paths["pretrain"]}')
    run_script('sft.py', 'config/tiny/sft.py', '--device=cpu', f'--init_from={paths["pretrain"]}',
               f'--out_dir={paths["sft"]}', f'--data_dir={paths["data"]}', f'--demos={paths["data"]}/sft.jsonl')
    return paths


@pytest.fixture(scope='session')
def enc(tmp_path_factory):
    """A 300-token BPE of a little of the world's prose, with the chat special tokens."""
    path = str(tmp_path_factory.mktemp('tok') / 'tokenizer.bpe')
    save_bpe(path, train_bpe(' '.join(world.corpus(world.make_world(0), 200)), 300, SPLIT_PATTERN, progress=False))
    return load_tokenizer(path)
