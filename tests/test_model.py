import math

import pytest
import torch
import torch.nn.functional as F

from model import (GPT, GPTConfig, RMSNormFunction, configure, load_checkpoint, lr_at, make_optimizer, sample,
                   sample_answers, save_checkpoint)


def tiny_model(**kw):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, block_size=48, n_layer=2, n_head=2, n_embd=32, **kw)
    return GPT(cfg).double().eval()  # float64: comparisons below are exact up to rounding, no near-ties


def test_causality():
    model = tiny_model()
    idx = torch.randint(50, (3, 20))
    changed = idx.clone()
    changed[:, 12] = (changed[:, 12] + 1) % 50
    a, b = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=1e-12)
    assert (a[:, 12:] - b[:, 12:]).abs().max() > 1e-4  # the change is seen from position 12 on


def reference_llama(model, idx):
    """The same LLaMA model written out plainly from its weights: RMSNorm with torch's default eps,
    rotary embedding on the interleaved pairs (x[2i], x[2i+1]) with cos and sin, causal softmax
    attention, SwiGLU MLP, tied embedding."""
    B, T = idx.shape
    C, H = model.config.n_embd, model.config.n_head
    D = C // H

    def rmsnorm(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + torch.finfo(x.dtype).eps) * w

    def rotary(x):  # (B, H, T, D)
        out = torch.empty_like(x)
        for i in range(D // 2):
            angle = torch.arange(T, dtype=x.dtype) / 10000 ** (2 * i / D)
            a, b = x[..., 2 * i], x[..., 2 * i + 1]
            out[..., 2 * i] = a * torch.cos(angle) - b * torch.sin(angle)
            out[..., 2 * i + 1] = a * torch.sin(angle) + b * torch.cos(angle)
        return out

    x = model.wte.weight[idx]
    for block in model.blocks:
        h = rmsnorm(x, block.norm1.weight)
        q, k, v = (t.reshape(B, T, H, D).transpose(1, 2) for t in (h @ block.attn.qkv.weight.T).split(C, dim=-1))
        scores = rotary(q) @ rotary(k).transpose(-1, -2) / math.sqrt(D)
        scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float('-inf'))
        y = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ block.attn.proj.weight.T
        h = rmsnorm(x, block.norm2.weight)
        x = x + (F.silu(h @ block.mlp.gate.weight.T) * (h @ block.mlp.up.weight.T)) @ block.mlp.down.weight.T
    return rmsnorm(x, model.norm.weight) @ model.wte.weight.T


def test_gpt_equals_a_plain_reference_llama_forward_and_backward():
    model = tiny_model()
    idx = torch.randint(50, (2, 16))
    weights = torch.randn(2, 16, 50, dtype=torch.float64)  # a loss that weighs every logit differently
    logits = model(idx)[0]
    reference = reference_llama(model, idx)
    torch.testing.assert_close(logits, reference, rtol=0, atol=1e-7)
    grads = torch.autograd.grad((logits * weights).sum(), list(model.parameters()))
    expected = torch.autograd.grad((reference * weights).sum(), list(model.parameters()))
    for (name, _), g, e in zip(model.named_parameters(), grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5, msg=name)


def test_rms_norm_gradient_is_the_derivative():
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: RMSNormFunction.apply(x, w, 1e-6), (x, w))
    torch.testing.assert_close(RMSNormFunction.apply(x, w, 1e-6), F.rms_norm(x, [8], w, 1e-6))


def test_sampler_draws_from_the_softmax():
    torch.manual_seed(0)
    probs = torch.tensor([0.5, 0.0, 0.2, 0.25, 0.05, 0.0])
    draws = sample(probs.expand(200_000, 6)).squeeze(1)
    frequencies = torch.bincount(draws, minlength=6) / len(draws)
    assert frequencies[1] == 0 and frequencies[5] == 0  # never a token of probability 0, the last one included
    torch.testing.assert_close(frequencies, probs, rtol=0, atol=0.004)  # (4 standard errors at p = 0.5)


def test_left_padding_equals_no_padding():
    """A left-padded row gives the same logits as the row alone: padding is masked and does not
    shift positions."""
    model = tiny_model()
    rows = [torch.randint(1, 50, (n,)) for n in (9, 4, 6)]
    padded = torch.stack([torch.cat([torch.zeros(9 - len(r), dtype=torch.long), r]) for r in rows])
    logits = model(padded, n_pad=torch.tensor([9 - len(r) for r in rows]))[0]
    for b, r in enumerate(rows):
        alone = model(r[None])[0][0]
        torch.testing.assert_close(logits[b, 9 - len(r):], alone, rtol=0, atol=1e-10)


def greedy_full_recompute(model, prompt, n):
    """The slow reference: the whole sequence through the model for every new token."""
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(model(torch.tensor([seq]))[0][0, -1].argmax()))
    return seq[len(prompt):]


def test_kv_cache_generation_equals_full_recompute():
    model = tiny_model()
    prompts = [[5, 9, 3], [7, 1, 2, 8, 4, 4, 11], [30, 31, 32, 33, 34]]
    tokens, lengths = model.generate(prompts, 12, temperature=0)
    assert lengths.tolist() == [12, 12, 12]
    for b, prompt in enumerate(prompts):
        assert tokens[b].tolist() == greedy_full_recompute(model, prompt, 12)


def test_a_prompt_asked_many_times_is_read_once_and_answered_independently():
    model = tiny_model()
    prompts = [[5, 9, 3]] * 4 + [[7, 1, 2, 8, 4]] * 4  # 2 distinct prompts: their keys and values computed once
    tokens, _ = model.generate(prompts, 10, temperature=0)
    for b, prompt in enumerate(prompts):
        assert tokens[b].tolist() == greedy_full_recompute(model, prompt, 10)
    torch.manual_seed(0)
    tokens, _ = model.generate([[5, 9, 3]] * 16, 10, temperature=1.0)
    assert len({tuple(row) for row in tokens.tolist()}) > 8  # each copy draws its own answer


def test_generate_stops_at_stop_token():
    model = tiny_model()
    prompts = [[5, 9, 3], [7, 1, 2, 8], [30, 31]]
    tokens, _ = model.generate(prompts, 20, temperature=0)
    stop = int(tokens[1, 3])  # make row 1's fourth new token the stop token (finished rows leave the batch)
    tokens2, lengths = model.generate(prompts, 20, temperature=0, stop_token=stop)
    for b in range(3):
        row = tokens[b].tolist()
        expected = row.index(stop) + 1 if stop in row else 20
        assert lengths[b] == expected
        assert tokens2[b, :expected].tolist() == row[:expected]


def test_sample_answers_batched_by_length_keeps_the_prompt_order(enc):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=320, block_size=64, n_layer=2, n_head=2, n_embd=32)).double().eval()
    prompts = ['Tell me a long story about Mira and Leo, please.', 'Hi?', 'Where does Leo live?', 'Who is Mira?',
               [dict(role='user', content='Hi?'), dict(role='assistant', content='Hello.'), dict(role='user', content='And?')]]
    together = sample_answers(model, enc, prompts, 12, temperature=0, batch_size=2)  # sorted by length, then batched
    assert together == [sample_answers(model, enc, [p], 12, temperature=0)[0] for p in prompts]


def test_sampling_with_top_k_stays_in_top_k():
    model = tiny_model()
    torch.manual_seed(1)
    prompts = [[1, 2, 3]] * 64
    tokens, _ = model.generate(prompts, 1, temperature=1.0, top_k=3)
    top3 = model(torch.tensor([[1, 2, 3]]))[0][0, -1].topk(3).indices.tolist()
    assert set(tokens[:, 0].tolist()) <= set(top3)
    assert len(set(tokens[:, 0].tolist())) > 1  # it samples, not argmax


def test_generate_too_long_is_an_error():
    with pytest.raises(ValueError, match='block_size'):
        tiny_model().generate([[1] * 40], 20, temperature=0)


def test_scalar_head_scores_every_position_causally():
    model = tiny_model(scalar_head=True)
    idx = torch.randint(50, (2, 10))
    scores = model(idx)[0]
    assert scores.shape == (2, 10)
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 50
    torch.testing.assert_close(model(changed)[0][:, :7], scores[:, :7])


def test_loss_ignores_masked_targets_and_never_nans():
    model = tiny_model()
    idx = torch.randint(50, (2, 8))
    targets = torch.full((2, 8), -1)
    assert model(idx, targets)[1].item() == 0.0  # all masked: 0, not NaN
    targets[0, 3] = 7
    logits, loss = model(idx, targets)
    assert loss.item() == pytest.approx(-torch.log_softmax(logits[0, 3], -1)[7].item())


def test_lr_schedule_warms_up_then_decays_to_min():
    lrs = [lr_at(it, 1.0, 0.1, 10, 100) for it in range(120)]
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))          # rises during warmup
    assert lrs[9] == pytest.approx(1.0)                              # peak at the end of warmup
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))           # then never rises
    assert lrs[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[100] == pytest.approx(0.1) and lrs[119] == pytest.approx(0.1)


def test_optimizer_decays_matrices_only():
    model = tiny_model()
    decay, no_decay = make_optimizer(model, 1e-3, 0.1, 'cpu').param_groups
    assert decay['weight_decay'] == 0.1 and all(p.dim() == 2 for p in decay['params'])
    assert no_decay['weight_decay'] == 0.0 and all(p.dim() == 1 for p in no_decay['params'])
    assert sum(p.numel() for g in (decay, no_decay) for p in g['params']) == model.num_params()


def test_configure_casts_overrides_and_reads_config_files(tmp_path):
    defaults = dict(lr=1e-3, n_layer=4, compile=True, out_dir='out', _private=1)
    preset = tmp_path / 'preset.py'
    preset.write_text('# a preset\nn_layer = 12\nlr = 6\n')
    config = configure(defaults, [str(preset), '--compile=false', '--out_dir=elsewhere', '--lr=3e-4'])
    assert config == dict(lr=3e-4, n_layer=12, compile=False, out_dir='elsewhere')
    assert defaults['n_layer'] == 12 and type(defaults['lr']) is float


@pytest.mark.parametrize('args, message', [
    (['--n_layers=3'], "unknown config key 'n_layers'; valid keys: compile, lr, n_layer"),
    (['--n_layer=2.5'], 'n_layer must be int'),
    (['--compile=yes please'], 'compile must be bool'),
    (['--lr'], 'write --lr=VALUE'),
    (['missing.py'], 'config file missing.py not found'),
])
def test_configure_rejects_bad_input(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        configure(dict(lr=1e-3, n_layer=4, compile=True), args)
    assert message in str(e.value)


def test_config_file_errors_name_the_line(tmp_path):
    preset = tmp_path / 'preset.py'
    preset.write_text('n_layer = 2\nimport os\n')
    with pytest.raises(SystemExit, match='preset.py:2: only `key = value`'):
        configure(dict(n_layer=4), [str(preset)])


def test_checkpoint_round_trip_and_errors(tmp_path):
    model = tiny_model().float()
    path = str(tmp_path / 'stage' / 'ckpt.pt')
    save_checkpoint(path, model, iter_num=3, config={'lr': 0.1})
    loaded, ckpt = load_checkpoint(path, 'python stage.py')
    assert ckpt['iter_num'] == 3 and not (tmp_path / 'stage' / 'ckpt.pt.tmp').exists()
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(SystemExit, match=r'nowhere/ckpt.pt not found: run python stage.py first'):
        load_checkpoint(str(tmp_path / 'nowhere' / 'ckpt.pt'), 'python stage.py')
    (tmp_path / 'bad.pt').write_bytes(b'not a checkpoint')
    with pytest.raises(SystemExit, match='is not a readable checkpoint'):
        load_checkpoint(str(tmp_path / 'bad.pt'), 'python stage.py')
