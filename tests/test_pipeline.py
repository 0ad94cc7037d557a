"""run.sh, the whole chain, on the tiny presets: every stage writes its checkpoint, the report card
has a row per checkpoint with finite numbers, and a stage reruns when what it reads changed."""
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

from conftest import ROOT, fake_python


def chain_env(out):
    return {**os.environ, 'PYTHON': sys.executable, 'OUT': str(out), 'PRESET': 'config/tiny', 'OMP_NUM_THREADS': '1',
            'JOBS': '1', 'PATH': os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH']}


def run_chain(out):
    result = subprocess.run(['bash', 'run.sh'], cwd=ROOT, env=chain_env(out), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return re.findall(r'^== (\w+): (up to date|done)', result.stdout, flags=re.M)


def test_the_whole_chain_then_a_rerun_after_an_input_changed(tmp_path):
    stages = ['data', 'pretrain', 'sft', 'reward', 'bestofk', 'dpo', 'rlhf', 'rloo', 'reward2', 'rlhf2', 'report']
    assert run_chain(tmp_path) == [(stage, 'done') for stage in stages]
    for stage in stages[1:-1]:
        assert os.path.exists(tmp_path / stage / 'ckpt.pt'), stage
    report = (tmp_path / 'report.md').read_text()
    rows, policies = {}, {'pretrain', 'sft', 'bestofk', 'dpo', 'rlhf', 'rloo', 'rlhf2'}
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip('|').split('|')]
        if line.startswith('|') and cells[0] in policies and cells[0] not in rows:
            rows[cells[0]] = cells
    assert set(rows) == policies, report[:2000]
    for stage, cells in rows.items():
        gold = float(cells[1].split()[0])
        assert 0 <= gold <= 1 and math.isfinite(gold), cells
    times = json.load(open(tmp_path / 'stage_times.json'))
    assert set(times) == set(stages)
    # the second round's reward model changed: PPO round 2 and the report run again, nothing else
    os.utime(tmp_path / 'reward2' / '.done')
    assert run_chain(tmp_path) == [(s, 'up to date') for s in stages[:-2]] + [('rlhf2', 'done'), ('report', 'done')]


def test_one_chain_per_output_folder(tmp_path):
    lock = tmp_path / '.run.lock'
    first = subprocess.Popen(['bash', 'run.sh'], cwd=ROOT, env=chain_env(tmp_path), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(500):
        if os.path.islink(lock):
            break
        time.sleep(0.01)
    second = subprocess.run(['bash', 'run.sh'], cwd=ROOT, env=chain_env(tmp_path), capture_output=True, text=True,
                            timeout=60)
    assert second.returncode == 1 and second.stdout == '', second.stdout
    assert second.stderr.count('\n') == 1 and f'in use by another run.sh (pid {first.pid})' in second.stderr
    os.killpg(first.pid, signal.SIGKILL)  # the whole run, its stage too
    first.wait()
    assert os.path.islink(lock)  # a killed run leaves its lock behind ...
    third = subprocess.run(['bash', 'run.sh'], cwd=ROOT, env={**chain_env(tmp_path), 'PYTHON': 'false'},
                           capture_output=True, text=True, timeout=60)
    assert 'in use' not in third.stderr and third.stdout.startswith('== ')  # ... and the next run takes it over
    assert not os.path.lexists(lock)  # and gives it back when it ends (here: its first stage failed)


LANE = str(max(1, len(os.sched_getaffinity(0)) // 2))  # a lane's threads: half this machine's cores


def label(call):
    """A logged call as 'stage threads' (a lane's: 'lane'): the last folder of its --out_dir (the
    report's: report; the report's early answers: 'report early' and their stages)."""
    out_dir = re.search(r'--out_dir=(\S+)', call).group(1)
    name = 'report' if out_dir.endswith('/out') else os.path.basename(out_dir)
    stages = re.search(r'--stages=(\S+)', call)
    threads = call.split('threads=')[1]
    return f"{name}{' early ' + stages.group(1) if stages else ''} {'lane' if threads == LANE else threads}"


def run_jobs(tmp_path, fail_on=''):
    """run.sh with its default JOBS, every stage a fake_python: (the result, the calls' labels)."""
    fake, log = fake_python(tmp_path, fail_on)
    env = {**{k: v for k, v in os.environ.items() if k not in ('OMP_NUM_THREADS', 'JOBS')}, 'PYTHON': fake,
           'OUT': str(tmp_path / 'out')}
    result = subprocess.run(['bash', 'run.sh'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    calls = [label(call) for call in log.read_text().splitlines()]
    log.unlink()
    return result, calls


def test_by_default_two_lanes_of_stages_half_the_cores_each(tmp_path):
    result, calls = run_jobs(tmp_path)
    assert result.returncode == 0, result.stderr
    assert calls[:4] == ['world all', 'pretrain all', 'sft all', 'reward all'] and calls[-1] == 'report all'
    lanes = calls[4:-1]  # at once: PPO and its second round; the rest and the report's answers (PPO's too)
    ppo = [c for c in lanes if c in ('rlhf lane', 'reward2 lane', 'rlhf2 lane')]
    assert ppo == ['rlhf lane', 'reward2 lane', 'rlhf2 lane']
    assert [c for c in lanes if c not in ppo] == ['bestofk lane', 'dpo lane', 'rloo lane',
                                                  'report early pretrain,sft,bestofk,dpo,rloo,rlhf lane']
    assert f'rlhf.log' in result.stdout  # (where a lane's stage writes, said on the screen)
    stages = {'data', 'pretrain', 'sft', 'reward', 'bestofk', 'dpo', 'rlhf', 'rloo', 'reward2', 'rlhf2',
              'early_report', 'report'}
    assert set(json.load(open(tmp_path / 'out' / 'stage_times.json'))) == stages
    assert (tmp_path / 'out' / 'rlhf.log').exists() and not (tmp_path / 'out' / 'sft.log').exists()


def test_jobs_2_a_stage_that_fails_stops_its_lane_not_the_other(tmp_path):
    result, calls = run_jobs(tmp_path, fail_on='dpo.py*')
    assert result.returncode == 1
    assert 'error: dpo failed; the end of' in result.stderr and 'dpo.py went wrong' in result.stderr
    assert 'rloo lane' not in calls and 'rlhf2 lane' in calls and 'report all' not in calls
    # run again: what finished is skipped, the rest runs
    result, calls = run_jobs(tmp_path)
    assert result.returncode == 0 and sorted(calls) == [
        'dpo lane', 'report all', 'report early pretrain,sft,bestofk,dpo,rloo,rlhf lane', 'rloo lane']


def test_when_ppo_fails_the_other_lane_does_not_wait_for_it(tmp_path):
    result, calls = run_jobs(tmp_path, fail_on='rlhf.py*/rlhf')
    assert result.returncode == 1 and 'error: rlhf failed' in result.stderr
    assert 'report early pretrain,sft,bestofk,dpo,rloo lane' in calls  # (the other lane ends, without PPO's)


def test_jobs_that_cannot_be_kept_are_a_one_line_error_before_anything_runs(tmp_path):
    env = {**os.environ, 'OUT': str(tmp_path / 'out')}
    for extra, message in [({'JOBS': '3'}, 'JOBS must be 1 or 2, not 3'),
                           ({'JOBS': '2', 'RUN': 'torchrun --nproc_per_node=2'}, 'with RUN=torchrun'),
                           ({'JOBS': '2', 'DATA': 'real'}, "SEEDS and JOBS are for the world's chain")]:
        result = subprocess.run(['bash', 'run.sh'], cwd=ROOT, env={**env, **extra}, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 1 and result.stderr.count('\n') == 1 and message in result.stderr, extra
        assert not (tmp_path / 'out').exists() and result.stdout == ''
