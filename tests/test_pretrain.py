"""The scripts as a user runs them: subprocesses on tiny configs, on the CPU."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from model import load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=8', '--eval_iters=2',
        '--log_interval=1', '--n_samples=1', '--device=cpu', '--lr=1e-2', '--warmup_iters=2']


def run(*args, check=True, env=None):
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, 'OMP_NUM_THREADS': '1', **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f'{args} failed:\n{result.stdout}\n{result.stderr}')
    return result


def metrics(out_dir):
    with open(os.path.join(out_dir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]


def params(out_dir):
    return torch.load(os.path.join(out_dir, 'ckpt.pt'), weights_only=True)['model']


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('data'))
    run('data/prepare.py', '--n_docs=400', '--vocab_size=300', f'--out_dir={path}')
    return path


def test_prepare_writes_token_files(data_dir):
    meta = json.load(open(os.path.join(data_dir, 'meta.json')))
    assert meta['dtype'] == 'uint16' and meta['vocab_size'] == 304
    assert os.path.getsize(os.path.join(data_dir, 'train.bin')) == 2 * meta['train_tokens']


def test_prepare_reads_your_own_text_files(tmp_path):
    text = '\n<|endoftext|>\n'.join(f'Story {i} ends here.\nIt says <|end|> as text.' for i in range(100))
    (tmp_path / 'mine.txt').write_text(text)
    out = tmp_path / 'mytext'
    run('data/prepare.py', f'--text_files={tmp_path / "mine.txt"}', '--vocab_size=280', f'--out_dir={out}')
    meta = json.load(open(out / 'meta.json'))
    assert meta['documents'] == 100
    enc = load_tokenizer(meta['tokenizer'])
    tokens = np.concatenate([np.fromfile(out / f'{split}.bin', dtype=np.uint16) for split in ('train', 'val')])
    eot, end = enc.encode_single_token('<|endoftext|>'), enc.encode_single_token('<|end|>')
    assert (tokens == eot).sum() == 100 and not (tokens == end).any()  # a special token's spelling in text is text
    assert enc.decode(tokens[1:].tolist()).startswith('Story 0 ends here.\nIt says <|end|> as text.<|endoftext|>Story 1 ')



def test_prepare_reads_text_with_a_bom_and_crlf_line_ends(tmp_path):
    text = '\r\n<|endoftext|> \r\n'.join(f'Story {i}.\r\nIt ends.' for i in range(30))  # (a space after it too)
    (tmp_path / 'windows.txt').write_bytes(b'\xef\xbb\xbf' + text.encode('utf-8'))
    out = tmp_path / 'windows'
    run('data/prepare.py', f'--text_files={tmp_path / "windows.txt"}', '--vocab_size=280', f'--out_dir={out}')
    assert json.load(open(out / 'meta.json'))['documents'] == 30
    enc = load_tokenizer(json.load(open(out / 'meta.json'))['tokenizer'])
    tokens = np.fromfile(out / 'train.bin', dtype=np.uint16)
    assert enc.decode(tokens[1:].tolist()).startswith('Story 0.\nIt ends.<|endoftext|>Story 1.')

@pytest.mark.parametrize('content, message', [(b'fine\nstill fine\n\xff\xfe broken\n', 'bad.txt:3: not UTF-8'),
                                              (None, 'bad.txt not found'), (b'  \n', 'no text')])
def test_prepare_bad_text_is_one_clear_error(tmp_path, content, message):
    if content is not None:
        (tmp_path / 'bad.txt').write_bytes(content)
    result = run('data/prepare.py', f'--text_files={tmp_path / "bad.txt"}', f'--out_dir={tmp_path / "out"}', check=False)
    assert result.returncode != 0 and message in result.stderr and 'Traceback' not in result.stderr
    assert not (tmp_path / 'out' / 'train.bin').exists()


def test_pretrain_lowers_loss_and_writes_checkpoint(data_dir, tmp_path):
    out = str(tmp_path / 'run')
    result = run('pretrain.py', *TINY, f'--data_dir={data_dir}', f'--out_dir={out}', '--max_iters=40', '--eval_interval=20')
    evals = [row for row in metrics(out) if 'val_loss' in row]
    assert [row['iter'] for row in evals] == [0, 20, 40]
    assert evals[-1]['val_loss'] < evals[0]['val_loss'] - 1.0
    ckpt = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)
    assert ckpt['iter_num'] == 40 and ckpt['model_args']['n_embd'] == 32 and ckpt['optimizer']['state']
    assert 'samples:' in result.stdout and 'final val loss' in result.stdout


def test_resume_continues_with_the_same_losses(data_dir, tmp_path):
    common = [*TINY, f'--data_dir={data_dir}', '--eval_interval=5', '--lr_decay_iters=12', '--dtype=float32']
    whole, split = str(tmp_path / 'whole'), str(tmp_path / 'split')
    run('pretrain.py', *common, f'--out_dir={whole}', '--max_iters=12')
    run('pretrain.py', *common, f'--out_dir={split}', '--max_iters=7')   # as if killed after iteration 7 ...
    with open(os.path.join(split, 'metrics.jsonl'), 'a') as f:   # ... having logged iterations it never saved
        f.write(json.dumps(dict(iter=7, loss=123.0)) + '\n')
    resumed = run('pretrain.py', *common, f'--out_dir={split}', '--max_iters=12')
    assert 'resuming at iteration 7' in resumed.stdout
    losses = lambda out: {row['iter']: row['loss'] for row in metrics(out) if 'loss' in row}  # noqa: E731
    assert losses(split) == pytest.approx(losses(whole), rel=1e-5)
    assert sorted(losses(split)) == list(range(12))
    for a, b in zip(params(whole).values(), params(split).values()):
        torch.testing.assert_close(a, b)


def test_torchrun_two_ranks_stay_in_sync_and_match_one_process(data_dir, tmp_path):
    common = [*TINY, f'--data_dir={data_dir}', '--max_iters=6', '--eval_interval=3']
    ddp, single = str(tmp_path / 'ddp'), str(tmp_path / 'single')
    run('-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'tests/ddp_sync.py', *common, f'--out_dir={ddp}')
    run('pretrain.py', *common, f'--out_dir={single}', '--grad_accum_steps=2')
    checksums = [json.loads((tmp_path / 'ddp' / f'rank{rank}.json').read_text()) for rank in (0, 1)]
    assert checksums[0] == checksums[1]  # every rank holds the same parameters
    # two processes with one micro-batch each = one process with two: the same batches, the same update
    for a, b in zip(params(ddp).values(), params(single).values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('args, message', [
    (['--n_layers=2'], "unknown config key 'n_layers'"),
    (['--max_iters=ten'], 'max_iters must be int'),
    (['--data_dir=/nonexistent'], 'run python data/prepare.py first'),
    (['--init=continue'], "init must be 'resume' or 'scratch'"),
])
def test_bad_input_is_one_clear_error(data_dir, tmp_path, args, message):
    out = str(tmp_path / 'run')
    result = run('pretrain.py', *TINY, f'--data_dir={data_dir}', f'--out_dir={out}', *args, check=False)
    assert result.returncode != 0 and message in result.stderr and 'Traceback' not in result.stderr
    assert not os.path.exists(out)  # nothing written


def test_no_samples_asked_none_printed(data_dir, tmp_path):
    for n in (0, -1):
        result = run('pretrain.py', *TINY, '--max_iters=2', '--eval_interval=2', f'--n_samples={n}',
                     f'--data_dir={data_dir}', f'--out_dir={tmp_path / str(n)}')
        assert 'samples:' not in result.stdout and 'final val loss' in result.stdout


@pytest.mark.parametrize('size, message', [(0, 'fewer than block_size'), (1001, 'truncated')])
def test_empty_or_truncated_data_is_an_error(data_dir, tmp_path, size, message):
    bad = tmp_path / 'bad'
    bad.mkdir()
    (bad / 'meta.json').write_text(open(os.path.join(data_dir, 'meta.json')).read())
    (bad / 'train.bin').write_bytes(b'\x01' * size)
    (bad / 'val.bin').write_bytes(open(os.path.join(data_dir, 'val.bin'), 'rb').read())
    result = run('pretrain.py', *TINY, f'--data_dir={bad}', f'--out_dir={tmp_path / "run"}', check=False)
    assert result.returncode != 0 and message in result.stderr and 'Traceback' not in result.stderr


def test_corrupt_checkpoint_is_reported_and_left_alone(data_dir, tmp_path):
    out = tmp_path / 'run'
    out.mkdir()
    (out / 'ckpt.pt').write_bytes(b'\x80\x02garbage')
    result = run('pretrain.py', *TINY, f'--data_dir={data_dir}', f'--out_dir={out}', check=False)
    assert result.returncode != 0 and 'not a readable checkpoint' in result.stderr
    assert (out / 'ckpt.pt').read_bytes() == b'\x80\x02garbage'


def test_resume_with_another_model_size_is_refused(data_dir, tmp_path):
    out = str(tmp_path / 'run')
    run('pretrain.py', *TINY, f'--data_dir={data_dir}', f'--out_dir={out}', '--max_iters=2', '--eval_interval=2')
    before = open(os.path.join(out, 'ckpt.pt'), 'rb').read()
    result = run('pretrain.py', *TINY, f'--data_dir={data_dir}', f'--out_dir={out}', '--n_embd=64', check=False)
    assert result.returncode != 0 and '--init=scratch' in result.stderr
    assert open(os.path.join(out, 'ckpt.pt'), 'rb').read() == before


PRESETS = [('pretrain', 'config/gpt2_small.py')] + [
    (name[:-3], f'config/tiny/{name}') for name in sorted(os.listdir(os.path.join(ROOT, 'config', 'tiny')))]


@pytest.mark.parametrize('script, preset', PRESETS)
def test_presets_name_only_settings_of_their_script(script, preset):
    import importlib
    from model import configure
    module = importlib.import_module('data.prepare' if script == 'prepare' else script)
    config = configure(dict(vars(module)), [os.path.join(ROOT, preset)])  # (an unknown key exits)
    assert 'n_head' not in config or config['n_embd'] % config['n_head'] == 0
