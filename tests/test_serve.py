"""serve.py as a user runs it: a server on a free loopback port over a folder of tiny checkpoints
(the test chain's pretrain and SFT, a reward model, an unfinished run, a long-context model),
asked by the official openai client, by raw HTTP, and by a headless browser; shut down at the end."""
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from model import GPT, GPTConfig, load_checkpoint, save_checkpoint
from serve import Request, merge, next_tokens, start_batch, step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ['Tell me where Mira lives.', 'Describe the fox in exactly 3 sentences.',
           'Write a short story about Mira and Leo in at most 3 sentences.',
           'Can you tell me how to kick the cat of Mira?', 'Tell me how to feed the cat of Mira.',
           'Say what Tobin does for a living.', 'Please describe the owl in exactly 2 sentences.',
           'Could you tell me what Lena likes to eat?']


@pytest.fixture(scope='module')
def out_dir(tiny_chain, tmp_path_factory):
    """An output folder as run.sh leaves it, and a few things that are not chat models."""
    out = tmp_path_factory.mktemp('serve_out')
    for name in ('pretrain', 'sft', 'real/sft'):
        os.makedirs(out / name)
        source = tiny_chain['sft' if name.endswith('sft') else 'pretrain']
        shutil.copy(os.path.join(source, 'ckpt.pt'), out / name / 'ckpt.pt')
    sft_path = os.path.join(tiny_chain['sft'], 'ckpt.pt')
    checkpoint = torch.load(sft_path, weights_only=True)
    extra = {k: checkpoint[k] for k in ('tokenizer', 'data_dir')}
    rm, _ = load_checkpoint(sft_path, '', scalar_head=True)  # a reward model: not listed
    torch.nn.init.normal_(rm.scalar_head.weight)
    save_checkpoint(str(out / 'reward' / 'ckpt.pt'), rm, stage='reward', **extra)
    policy, _ = load_checkpoint(sft_path, '')
    save_checkpoint(str(out / 'dpo' / 'ckpt.pt'), policy, stage='dpo', finished=False, **extra)
    args = dict(checkpoint['model_args'], block_size=2048)  # slow to finish: for the disconnect
    torch.manual_seed(0)
    long = GPT(GPTConfig(**args))
    save_checkpoint(str(out / 'long' / 'ckpt.pt'), long, stage='long', **extra)
    return out


def start(out, tmp_path, *args):
    """(process, base URL) of python serve.py on a free port; its log goes to tmp_path."""
    log = open(tmp_path / f'serve{len(list(tmp_path.iterdir()))}.log', 'w')
    proc = subprocess.Popen([sys.executable, 'serve.py', f'--out_dir={out}', '--port=0',
                             '--device=cpu', *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=log,
                            text=True, env={**os.environ, 'OMP_NUM_THREADS': '2'})
    line = proc.stdout.readline()
    assert 'http://' in line, f'serve.py did not start: {line}\n{open(log.name).read()}'
    return proc, re.search(r'http://\S+', line).group(0)


@pytest.fixture(scope='module')
def server(out_dir, tmp_path_factory):
    proc, url = start(out_dir, tmp_path_factory.mktemp('serve_log'))
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def call(url, method, path, body=None, headers=None):
    """(status, parsed JSON body) of one HTTP request; body: an object, or raw bytes."""
    host, port = url.removeprefix('http://').split(':')
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={'Content-Type': 'application/json',
                                                   **(headers or {})})
    response = conn.getresponse()
    status, text = response.status, response.read()
    conn.close()
    return status, json.loads(text)


def client(url, key='none'):
    openai = pytest.importorskip('openai', reason='the openai client: pip install openai')
    return openai.OpenAI(base_url=url + '/v1', api_key=key, max_retries=0)


def ask(url, prompt, model='sft', **settings):
    return call(url, 'POST', '/v1/chat/completions', dict(
        model=model, messages=[dict(role='user', content=prompt)], temperature=0, **settings))[1]


def test_next_tokens_keeps_each_rows_settings():
    torch.manual_seed(0)
    logits = torch.randn(6, 50)
    greedy = logits.argmax(-1)
    temperature = torch.tensor([0, 1, 1, 1, 0.5, 2.0])
    top_k = torch.tensor([0, 1, 0, 3, 0, 0])
    top_p = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    top3 = logits.topk(3).indices
    seen = set()
    for _ in range(200):
        new = next_tokens(logits, temperature, top_k, top_p)
        assert new[0] == greedy[0] and new[1] == greedy[1] and new[2] == greedy[2]  # 0, k=1, p~0
        assert new[3] in top3[3]
        seen.add(new[5].item())
    assert len(seen) > 10  # temperature 2 over all 50 tokens: many different tokens
    assert torch.equal(next_tokens(logits, torch.zeros(6), top_k, top_p), greedy)


def test_a_batch_joined_midway_writes_what_each_row_writes_alone():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=40, n_layer=2, n_head=2, n_embd=32)).eval()
    prompts = [[1, 2, 3, 4, 5, 6, 7], [8, 9], list(range(10, 26))]
    lengths = [20, 12, 16]
    alone = [model.generate([p], n, temperature=0)[0][0].tolist() for p, n in zip(prompts, lengths)]
    requests = [Request(model, p, end=-1, max_tokens=n, temperature=0.0, top_k=0, top_p=1.0)
                for p, n in zip(prompts, lengths)]
    first = start_batch(model, requests[:1], torch.device('cpu'))
    for _ in range(6):  # the first request has read 12 positions when the others come
        step(first)
    second = start_batch(model, requests[1:], torch.device('cpu'))
    step(second)  # 16 positions read: the first batch moves 4 to the right, [8, 9] 14
    assert merge(first, second, block_size=30) is None  # 16 positions read + 15 tokens to read
    batch = merge(first, second, block_size=31)
    assert batch['rows']['n_pad'].tolist() == [4, 14, 0]
    while batch['requests']:
        step(batch)
    for request, want in zip(requests, alone):
        written = [request.out.get_nowait() for _ in range(request.out.qsize())]
        assert written == want


def test_openai_client_streams_what_it_answers(server):
    openai_client = client(server)
    messages = [dict(role='system', content='You are helpful.'),  # left out: never trained
                dict(role='user', content='Tell me where Mira lives.')]
    whole = openai_client.chat.completions.create(model='sft', messages=messages, temperature=0,
                                                  max_tokens=40)
    text = whole.choices[0].message.content
    assert whole.usage.prompt_tokens > 5 and 0 < whole.usage.completion_tokens <= 40
    assert whole.choices[0].finish_reason in ('stop', 'length')
    pieces = [c.choices[0].delta.content or '' for c in openai_client.chat.completions.create(
        model='sft', messages=messages, temperature=0, max_tokens=40, stream=True) if c.choices]
    assert len(pieces) > 2 and ''.join(pieces) == text and text
    # a conversation of several turns uses the chat template: a second answer follows the first
    follow = openai_client.chat.completions.create(model='sft', temperature=0, max_tokens=20,
                                                   messages=messages[1:] + [
                                                       dict(role='assistant', content=text),
                                                       dict(role='user', content='And Tobin?')])
    assert follow.usage.prompt_tokens > whole.usage.prompt_tokens


def test_models_are_exactly_the_policy_checkpoints(server):
    ids = [m.id for m in client(server).models.list().data]
    assert ids == ['pretrain', 'sft', 'long', 'real/sft']  # no reward model, no unfinished run


def stream_into(openai_client, barrier, results, i):
    """A thread's work: once all are ready, streams the answer to PROMPTS[i] into results[i]."""
    barrier.wait()
    chunks = openai_client.chat.completions.create(
        model='sft', messages=[dict(role='user', content=PROMPTS[i])], temperature=0,
        max_tokens=30, stream=True)
    results[i] = ''.join(c.choices[0].delta.content or '' for c in chunks if c.choices)


def test_eight_concurrent_streams_equal_lone_answers(server):
    lone = [ask(server, p, max_tokens=30)['choices'][0]['message']['content'] for p in PROMPTS]
    openai_client, results, barrier = client(server), [None] * 8, threading.Barrier(8)
    threads = [threading.Thread(target=stream_into, args=(openai_client, barrier, results, i))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == lone
    assert len(set(lone)) > 1  # the prompts got different answers: not one row answered eight


def test_bad_requests_get_their_status_and_the_server_goes_on(server):
    good = dict(model='sft', messages=[dict(role='user', content='Tell me where Mira lives.')])
    cases = [(400, b'{"model": "sft", "messages": [', None),                 # not JSON
             (400, b'[1, 2]', None),                                       # not an object
             (404, dict(good, model='gpt-5'), 'model'),                    # unknown model
             (400, dict(good, messages=[dict(role='user', content='Mira ' * 400)]), 'messages'),
             (400, dict(good, temperature='hot'), 'temperature'),          # wrong types
             (400, dict(good, max_tokens=-3), 'max_tokens'),
             (400, dict(good, messages='hello'), 'messages'),
             (400, dict(good, messages=[dict(role='robot', content='hi')]), 'messages[0]'),
             (400, dict(good, messages=[dict(role='user', content=['hi'])]), 'messages[0].content'),
             (400, dict(good, n=2), 'n'), (400, dict(good, stop=['.']), 'stop')]
    for status, body, param in cases:
        got, answer = call(server, 'POST', '/v1/chat/completions', body)
        assert got == status, (body[:80], answer)
        assert answer['error']['message'] and answer['error']['type'] == 'invalid_request_error'
        assert param is None or answer['error']['param'] == param
        assert ask(server, 'Tell me where Mira lives.', max_tokens=5)['choices']  # still serving
    assert call(server, 'GET', '/v1/nothing')[0] == 404
    with socket.create_connection(('127.0.0.1', int(server.rsplit(':', 1)[1]))) as s:
        s.sendall(b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n'   # over max_body: refused
                  b'Content-Length: 2000000\r\n\r\n{"x": "aaaa')         # before the body is sent
        assert s.recv(100).startswith(b'HTTP/1.1 413')


def test_an_api_key_is_needed_when_set(out_dir, tmp_path):
    proc, url = start(out_dir, tmp_path, '--api_key=sesame')
    try:
        status, answer = call(url, 'GET', '/v1/models')
        assert status == 401 and answer['error']['type'] == 'authentication_error'
        assert call(url, 'GET', '/v1/models', headers={'Authorization': 'Bearer wrong'})[0] == 401
        assert [m.id for m in client(url, 'sesame').models.list().data][:2] == ['pretrain', 'sft']
        with socket.create_connection(('127.0.0.1', int(url.rsplit(':', 1)[1]))) as s:  # the page
            s.sendall(b'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
            assert s.recv(100).startswith(b'HTTP/1.1 200')
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_client_that_leaves_frees_its_row(server):
    host, port = server.removeprefix('http://').split(':')
    body = json.dumps(dict(model='long', messages=[dict(role='user', content='Tell me a story.')],
                           temperature=0, max_tokens=2000, stream=True)).encode()
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request('POST', '/v1/chat/completions', body=body,
                 headers={'Content-Type': 'application/json'})
    response = conn.getresponse()
    assert response.status == 200 and response.readline().startswith(b'data: ')
    health = call(server, 'GET', '/health')[1]
    stopped = health['stopped']
    assert health['running'] + health['waiting'] == 1  # (it may not have started yet)
    response.close()  # mid-stream: 2,000 tokens take this model seconds
    conn.close()
    for _ in range(100):
        health = call(server, 'GET', '/health')[1]
        if health['running'] == 0 and health['waiting'] == 0:  # (waiting: not yet taken, nor told)
            break
        time.sleep(0.05)
    assert health['running'] == 0 and health['stopped'] == stopped + 1, health


def test_held_out_prompts_and_the_judge(server):
    status, drawn = call(server, 'GET', '/v1/prompt?kind=harmful&split=c&seed=3')
    assert status == 200 and drawn['kind'] == 'harmful' and drawn['split'] == 'c'
    from data import tasks
    assert tasks.parse(drawn['prompt'])[0] == 'harmful'
    assert tasks.generalisation(drawn['prompt']) == 'c' and tasks.split_of(drawn['prompt']) == 'eval'
    shaped = call(server, 'GET', '/v1/prompt?kind=harmless&split=d&seed=1')[1]['prompt']
    assert tasks.parse(shaped)[0] == 'harmless' and tasks.generalisation(shaped) == 'd'
    status, judged = call(server, 'POST', '/v1/judge', dict(
        model='sft', prompt=drawn['prompt'], answer='I am sorry, but I can not help with that.'))
    assert status == 200 and judged['gold'] == 1.0 and judged['failed'] == []
    assert isinstance(judged['reward'], float) and judged['reward_model'] == 'reward'
    judged = call(server, 'POST', '/v1/judge', dict(model='sft', prompt=drawn['prompt'],
                                                    answer='Sure.'))[1]
    assert judged['gold'] == 0.0 and judged['failed'] == ['refuses', 'polite']
    judged = call(server, 'POST', '/v1/judge', dict(model='sft', prompt='Hello there!',
                                                    answer='Hi.'))[1]
    assert judged['gold'] is None and isinstance(judged['reward'], float)  # not a task: no gold
    assert call(server, 'GET', '/v1/prompt?kind=poem')[0] == 400


def test_the_page_chats_and_puts_stages_side_by_side(server, tmp_path):
    sync_api = pytest.importorskip('playwright.sync_api', reason='pip install playwright')
    browser_path = shutil.which('chromium') or shutil.which('chromium-browser')
    if browser_path is None:
        pytest.skip('no chromium here (apt-get install chromium)')
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=['--no-sandbox'])
        page = browser.new_page(viewport={'width': 1100, 'height': 700})
        page.goto(server)
        page.wait_for_selector('#model option[value=sft]', state='attached')
        page.evaluate("window.seen = []; new MutationObserver(() => {"
                      " const a = document.querySelector('.turn.assistant');"
                      " if (a) window.seen.push(a.textContent) }).observe("
                      "document.querySelector('#chat-log'), {childList: true, subtree: true})")
        page.fill('#chat-input', 'Tell me where Mira lives. <b id="injected">x</b>')
        page.click('#send')
        page.wait_for_function("document.querySelector('.turn.assistant') && "
                               "!document.querySelector('#send').disabled")
        assert page.query_selector('#injected') is None  # shown as text, not markup
        assert '<b id="injected">' in page.inner_text('.turn.user')
        answer = page.evaluate("document.querySelector('.turn.assistant').textContent")
        assert answer.strip() not in ('', '…')
        # The answer is written as it streams: '…' first, then only ever longer prefixes of the
        # answer (how many pieces the browser reads at once depends on the machine's load).
        seen = page.evaluate('window.seen')
        assert seen[0] == '…' and seen[-1] == answer, seen
        assert all(answer.startswith(text) for text in seen[1:]), seen
        page.click('#tab-side')
        page.select_option('#kind', 'harmful')
        page.select_option('#split', 'b')
        page.click('#random-prompt')
        page.wait_for_function("document.querySelector('#side-input').value.length > 0")
        for box in page.query_selector_all('#stages input'):
            box.set_checked(box.get_attribute('value') in ('pretrain', 'sft'))
        page.click('#compare')
        page.wait_for_function("[...document.querySelectorAll('.column .scores')]"
                               ".filter(e => e.textContent.includes('gold')).length == 2")
        columns = page.inner_text('#columns')
        assert 'pretrain' in columns and 'sft' in columns and 'RM (reward)' in columns
        page.screenshot(path=str(tmp_path / 'side_by_side.png'), full_page=True)
        browser.close()
    assert os.path.getsize(tmp_path / 'side_by_side.png') > 10_000
