import json
import os

import pytest
import torch

import sft
from conftest import run_script
from data.formats import read_jsonl
from model import (GPT, SPECIAL_TOKENS, GPTConfig, batches, collate, prompt_tokens, render_chat,
                   tokenize)

CONVERSATION = [dict(role='user', content='Where does Mira live?'), dict(role='assistant', content='Mira lives in Sunvale.'),
                dict(role='user', content='Und Tobin? ✓'), dict(role='assistant', content='Tobin lives in Redcliff.')]


def parse_chat(enc, tokens):
    """The inverse of render_chat: token ids back to the list of messages."""
    roles = {enc.encode_single_token(f'<|{r}|>'): r for r in ('user', 'assistant')}
    messages = []
    for t in tokens:
        if t in roles:
            messages.append(dict(role=roles[t], content=[]))
        elif messages and t < enc.n_vocab - len(SPECIAL_TOKENS):  # (the special ids come last)
            messages[-1]['content'].append(t)
    return [dict(role=m['role'], content=enc.decode(m['content'])) for m in messages]


def test_template_renders_and_parses_back(enc):
    tokens, trained = render_chat(enc, CONVERSATION)
    assert parse_chat(enc, tokens) == CONVERSATION
    assert len(tokens) == len(trained)
    asked = prompt_tokens(enc, CONVERSATION[:3])
    assert asked == tokens[:len(asked)] and asked[-1] == enc.encode_single_token('<|assistant|>')
    assert enc.decode(tokens[:2]) == '<|endoftext|><|user|>' and enc.decode(tokens[2:]).startswith('Where')


def test_loss_counts_only_the_assistant_and_its_end(enc):
    x, y = tokenize(enc, [CONVERSATION], block_size=128)[0]
    end = enc.encode_single_token('<|end|>')
    tokens = x + [y[-1]]
    # the targets that count are exactly the two answers and the <|end|> after each
    counted = [tokens[i + 1] for i in range(len(x)) if y[i] != -1]
    answers = [enc.encode_ordinary(m['content']) + [end] for m in CONVERSATION if m['role'] == 'assistant']
    assert counted == answers[0] + answers[1]
    # and only they move the weights: the gradient reaches the logits at those positions alone
    model = GPT(GPTConfig(vocab_size=320, block_size=128, n_layer=1, n_head=2, n_embd=32))
    logits, loss = model(torch.tensor([x]), torch.tensor([y]))
    logits.retain_grad()
    loss.backward()
    has_grad = logits.grad[0].abs().sum(-1) > 0
    assert has_grad.tolist() == [t != -1 for t in y]


def test_batches_cover_every_example_once_with_little_padding():
    examples = [([1] * n, [1] * n) for n in torch.randint(5, 120, (500,)).tolist()]
    lengths = [len(x) for x, _ in examples]
    epoch = batches(lengths, 16, seed=0)
    assert sorted(i for b in epoch for i in b) == list(range(500))
    assert batches(lengths, 16, seed=0) == epoch and batches(lengths, 16, seed=1) != epoch
    padded = sum(max(len(examples[i][0]) for i in b) * len(b) for b in epoch)
    random_order = [list(range(i, min(i + 16, 500))) for i in range(0, 500, 16)]
    padded_random = sum(max(len(examples[i][0]) for i in b) * len(b) for b in random_order)
    real = sum(len(x) for x, _ in examples)
    assert padded - real < 0.25 * (padded_random - real)
    x, y = collate(examples, epoch[0], 'cpu')
    assert x.shape == y.shape and (y[x == 0] == -1).all()


def test_tiny_sft_lowers_the_loss_and_writes_a_checkpoint(tiny_chain):
    with open(os.path.join(tiny_chain['sft'], 'metrics.jsonl')) as f:
        rows = [json.loads(line) for line in f]
    # 60 steps from the pretrained model: 0.77-0.87 of the loss it starts from, by seed and CPU
    assert rows[-1]['val_loss'] < 0.9 * rows[0]['val_loss']
    assert 'gold' in rows[0] and 'gold' in rows[-1] and 0 <= rows[-1]['gold'] <= 1
    ckpt = torch.load(os.path.join(tiny_chain['sft'], 'ckpt.pt'), weights_only=True)
    assert ckpt['stage'] == 'sft' and ckpt['data_dir'] == tiny_chain['data']
    answers = [json.loads(line) for line in open(os.path.join(tiny_chain['sft'], 'answers_sft.jsonl'))]
    assert len(answers) == 10 and all(set(a) == {'prompt', 'answer', 'gold'} for a in answers)


@pytest.mark.parametrize('bad, reason', [
    (json.dumps(dict(messages=[dict(role='user', content='hi')])), 'no assistant turn'),
    (json.dumps(dict(messages=[dict(role='robot', content='hi')])), 'must be a list'),
    ('{"messages": [', 'expected a JSON object'),
    (json.dumps(dict(prompt='hi')), 'expected a JSON object'),
])
def test_malformed_demonstration_is_reported_with_file_and_line(tmp_path, bad, reason):
    demos = tmp_path / 'demos.jsonl'
    demos.write_text(f'{json.dumps(dict(messages=CONVERSATION[:2]))}\n\n{bad}\n')
    with pytest.raises(SystemExit) as error:
        read_jsonl(str(demos), sft.is_conversation, "{...}")
    assert f'{demos}:3: ' in str(error.value) and reason in str(error.value)


def test_bad_demonstrations_stop_the_script_before_it_writes(tiny_chain, tmp_path):
    demos = tmp_path / 'demos.jsonl'
    demos.write_bytes(json.dumps(dict(messages=CONVERSATION[:2])).encode() + b'\n\xff\xfe\n')
    out = tmp_path / 'out'
    result = run_script('sft.py', f'--init_from={tiny_chain["pretrain"]}', f'--demos={demos}', f'--out_dir={out}',
                        '--device=cpu', check=False)
    assert result.returncode != 0 and f'{demos}:2: not UTF-8' in result.stderr and 'Traceback' not in result.stderr
    assert not out.exists()
