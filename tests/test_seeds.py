"""seeds.py, the card pooled over seeds: its standard error counts the seeds and the prompts (checked
against simulated chains whose spread is known), and the card it writes from several seeds' report
caches; run.sh's SEEDS: one chain per seed, each stage under that seed, the world the same."""
import json
import os
import random
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, fake_python, run_script
from data import tasks, world
from data.tasks import mean_and_stderr
from seeds import two_way_stderr


def simulate(generator, n_seeds, n_prompts, seed_sd, prompt_sd, noise_sd, prompt_effects):
    """x[seed][prompt] = seed effect + prompt effect (the same prompts in every seed) + noise."""
    seed_effects = torch.randn(n_seeds, 1, generator=generator, dtype=torch.float64) * seed_sd
    noise = torch.randn(n_seeds, n_prompts, generator=generator, dtype=torch.float64) * noise_sd
    return seed_effects + prompt_effects * prompt_sd + noise


@pytest.mark.parametrize('seed_sd', [0.0, 0.05])
def test_the_pooled_standard_error_matches_the_spread_of_the_mean_over_many_chains(seed_sd):
    # the mean's error over draws of seeds, prompts and noise: what the estimator must report
    generator, S, n = torch.Generator().manual_seed(0), 3, 60
    means, variances = [], []
    for _ in range(3000):
        prompts = torch.randn(1, n, generator=generator, dtype=torch.float64)
        x = simulate(generator, S, n, seed_sd, 0.2, 0.1, prompts)
        mu, se, within = two_way_stderr(x.tolist())
        assert mu == pytest.approx(x.mean().item())
        means.append(mu)
        variances.append(se ** 2)
    true_variance = torch.tensor(means).var().item()
    assert sum(variances) / len(variances) == pytest.approx(true_variance, rel=0.12)


def test_seeds_that_disagree_widen_the_error_beyond_one_chains():
    rng = random.Random(0)
    base = [rng.gauss(0, 0.1) for _ in range(100)]
    x = [[b + shift + rng.gauss(0, 0.02) for b in base] for shift in (0.0, 0.1, 0.2)]
    mu, se, within = two_way_stderr(x)
    assert mu == pytest.approx(0.1, abs=0.01)
    assert se > 0.05 > 4 * within  # the seeds' spread (0.1 between them) dominates
    # one seed: the prompts' error, as the one-chain card reports it
    mu, se, within = two_way_stderr(x[:1])
    assert (mu, se) == pytest.approx(mean_and_stderr(x[0])) and within == pytest.approx(se)


def write_seed(folder, prompts, samples, scores_of):
    """A seed's report cache as report.py writes it: prompts.json and report/<stage>.json."""
    os.makedirs(folder / 'report')
    (folder / 'report' / 'prompts.json').write_text(json.dumps(prompts))
    for stage, (scores, answers) in scores_of.items():
        result = dict(summary=dict(scores=scores), answers=answers)
        (folder / 'report' / f'{stage}.json').write_text(json.dumps(dict(key={}, result=result)))
    (folder / 'stage_times.json').write_text(json.dumps({'sft': 60, 'rlhf': 120}))


def card_rows(text, title):
    lines = text.split(f'\n## {title}\n', 1)[1].split('\n## ', 1)[0].strip().splitlines()
    rows = [[c.strip() for c in line.strip('|').split('|')] for line in lines if line.startswith('|')]
    return {row[0]: dict(zip(rows[0], row)) for row in rows[2:]}


def test_the_card_of_three_seeds(tmp_path):
    w = world.make_world(0)
    prompts = tasks.prompt_set(w, 'eval', 40)
    samples, rng = 2, random.Random(1)
    for n in (1, 2, 3):
        sft = [rng.random() * 0.5 for _ in range(len(prompts) * samples)]
        noise = [rng.gauss(0, 0.01) for _ in sft]
        harmless = {i for i, p in enumerate(prompts) if tasks.parse(p)[0] == 'harmless'}
        refuse = [tasks.REFUSAL if i // samples in harmless else 'Sure.' for i in range(len(sft))]
        stories = {i for i, p in enumerate(prompts) if tasks.parse(p)[0] == 'story'}
        worse = [s + e - 0.3 * (n == 3 and i // samples in stories)  # stories worse in seed 3 only
                 for i, (s, e) in enumerate(zip(sft, noise))]
        write_seed(tmp_path / f'seed{n}', prompts, samples, dict(
            sft=(sft, ['Sure.'] * len(sft)),
            rlhf=([s + 0.3 + e for s, e in zip(sft, noise)], ['Sure.'] * len(sft)),  # better in every seed
            dpo=([s + 0.3 + (0.3 if n == 1 else -0.3) * (n != 2) for s in sft], refuse),  # +0.6 / +0.3 / 0
            rloo=(worse, ['Sure.'] * len(sft))))
    result = run_script('seeds.py', f'--out_dir={tmp_path}', '--seeds=3', '--differences=rlhf-dpo,rlhf-sft')
    assert 'wrote' in result.stdout
    card = (tmp_path / 'report.md').read_text()
    stages = card_rows(card, 'Stages')
    assert set(stages) == {'sft', 'rlhf', 'dpo', 'rloo'}  # (a stage no seed has is not a row)
    mu, se = map(float, stages['rlhf']['gain over SFT ± se'].split(' ± '))
    assert mu == pytest.approx(0.3, abs=0.005) and se < 0.01 and stages['rlhf']['gain > 2 se'] == 'yes'
    gains = [float(g) for g in stages['dpo']['gain in each seed'].split(' / ')]
    assert gains == pytest.approx([0.6, 0.3, 0.0], abs=1e-3)
    # dpo's gain (+0.3) moves with the seed: its error counts that, one chain's does not
    mu, se = map(float, stages['dpo']['gain over SFT ± se'].split(' ± '))
    assert mu == pytest.approx(0.3, abs=1e-3) and se > 0.1 > 10 * float(stages['dpo']["one chain's se"])
    differences = card_rows(card, "The differences the README's conclusions rest on")
    assert differences['rlhf - dpo']['verdict'] == 'a tie (within 2 se)'
    assert differences['rlhf - sft']['verdict'] == 'holds across seeds'
    # harmless requests refused: dpo refuses every one, in every seed
    safety = card_rows(card, 'Harmful requests with new verbs, harmless ones refused')
    assert safety['dpo']['harmless refused, a: mean (largest seed)'] == '1.00 (1.00)'
    assert safety['rlhf']['harmless refused, a: mean (largest seed)'] == '0.00 (0.00)'
    assert card_rows(card, "The probe's requests, answered") == {}  # (no seed answered it: said so)
    assert "has no answers to the probe's requests" in card
    assert set(card_rows(card, 'Each seed')) == {'seed1', 'seed2', 'seed3'}
    # made worse in one seed: told for that seed, where the pooled check may not see it
    worst = card_rows(card, 'Does any method make a kind worse?')
    assert worst['rloo']['worse in a seed'] == 'yes' and worst['rlhf']['worse in a seed'] == 'no'
    assert '/story' in worst['rloo']['lowest in each seed (in its se)'].split(' / ')[2]
    kinds = card_rows(card, 'Gold of each kind, in splits a / b / c / d')
    for split in range(4):  # rlhf: SFT + 0.3 in every kind and split
        sft, rlhf = (kinds[stage]['story'].split(' / ')[split] for stage in ('sft', 'rlhf'))
        assert sft == '-' or float(rlhf) - float(sft) == pytest.approx(0.3, abs=0.011)


def test_the_probes_requests_are_pooled_over_seeds(tmp_path):
    w = world.make_world(0)
    prompts, requests = tasks.prompt_set(w, 'eval', 4), tasks.probe_requests(w, 4)
    columns = tasks.probe_columns(requests)
    for n in (1, 2, 3):
        write_seed(tmp_path / f'seed{n}', prompts, 1, dict(sft=([0.5] * 4, ['x'] * 4), dpo=([0.5] * 4, ['x'] * 4)))
        for stage, refused in (('sft', n == 2), ('dpo', True)):  # sft refuses everything in seed 2 only
            scores = [float(refused) if i in columns['harmful, seen verb'] else 0.25 * n for i in range(16)]
            probe = dict(prompts=requests, scores=[x for x in scores for _ in (0, 1)], refuses=[float(refused)] * 32,
                         answers=['x'] * 32)
            (tmp_path / f'seed{n}' / 'report' / f'{stage}.probe.json').write_text(json.dumps(dict(result=probe)))
    run_script('seeds.py', f'--out_dir={tmp_path}', '--seeds=3')
    rows = card_rows((tmp_path / 'report.md').read_text(), "The probe's requests, answered")
    assert rows['dpo']['harmless, new verb: refused'] == '1.000 ± 0.000 (1.00 / 1.00 / 1.00)'
    assert rows['sft']['harmful, seen verb'].endswith('(0.00 / 1.00 / 0.00)')
    assert rows['sft']['harmful, new verb, c'].startswith('0.500 ± ') and rows['sft']['harmful, new verb, c'].endswith(
        '(0.25 / 0.50 / 0.75)')  # (the seeds differ: their spread is in the pooled se)
    assert float(rows['sft']['harmful, new verb, c'].split(' ± ')[1].split()[0]) > 0.1


def test_seeds_of_different_worlds_are_not_pooled(tmp_path):
    w = world.make_world(0)
    for n, count in ((1, 10), (2, 12)):
        prompts = tasks.prompt_set(w, 'eval', count)
        write_seed(tmp_path / f'seed{n}', prompts, 1, dict(sft=([0.5] * count, ['x'] * count)))
    result = run_script('seeds.py', f'--out_dir={tmp_path}', '--seeds=2', check=False)
    assert result.returncode != 0 and 'different held-out prompts' in result.stderr
    result = run_script('seeds.py', f'--out_dir={tmp_path}', '--seeds=3', check=False)
    assert result.returncode != 0 and 'seed3/report/prompts.json is missing' in result.stderr


def test_run_sh_runs_one_chain_per_seed_each_stage_under_its_seed(tmp_path):
    fake, log = fake_python(tmp_path)
    env = {**{k: v for k, v in os.environ.items() if k != 'OMP_NUM_THREADS'}, 'PYTHON': fake, 'SEEDS': '2',
           'JOBS': '1', 'OUT': str(tmp_path / 'out')}  # (one stage at a time: in the order of one chain)
    first = subprocess.run(['bash', 'run.sh'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    calls = [call.removesuffix(' threads=all') for call in log.read_text().splitlines()]
    scripts = [call.split()[0] for call in calls]
    chain = ['data/prepare.py', 'pretrain.py', 'sft.py', 'reward.py', 'bestofk.py', 'dpo.py', 'rlhf.py', 'rlhf.py',
             'reward.py', 'rlhf.py', 'report.py']
    assert scripts == chain + chain + ['seeds.py']
    for n, part in ((1, calls[:len(chain)]), (2, calls[len(chain):-1])):
        assert all(f'/out/seed{n}' in call for call in part)
        assert '--seed' not in part[0]  # the world and its prompts: the same for every seed
        assert all(call.endswith(f'--seed={1336 + n}') for call in part[1:])
    assert calls[-1].endswith(f'--out_dir={tmp_path}/out --seeds=2')
    # run again: every seed's stages and the pooled card are up to date
    again = subprocess.run(['bash', 'run.sh'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert again.stdout.count('up to date') == 2 * len(chain) + 1 and len(log.read_text().splitlines()) == len(calls)
    bad = subprocess.run(['bash', 'run.sh'], cwd=ROOT, env={**env, 'SEEDS': 'three'}, capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr == 'error: SEEDS must be a whole number, 1 or more, not three\n'
