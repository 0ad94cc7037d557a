"""Talk to every stage in your browser, or from any OpenAI client (README: "Talk to it in your
browser"). The standard library's HTTP server; one engine thread writes every answer.

  python serve.py                         # after bash run.sh; then open http://127.0.0.1:8000
  python serve.py --out_dir=out/tiny --port=8080 --api_key=secret    # or SERVE_API_KEY=secret

  POST /v1/chat/completions  OpenAI's chat format: messages, model, temperature, top_p, top_k,
                             max_tokens, stream (server-sent events, token by token), with usage
  GET  /v1/models            every policy checkpoint under out_dir, by stage ('sft', 'real/sft')
  GET  /                     serve.html: a chat, and the stages side by side
  GET  /v1/prompt?kind=harmful&split=c   a random held-out prompt of the world (for the page)
  POST /v1/judge             {model, prompt, answer}: the gold judge's score and the RM's
  GET  /health               requests running, waiting, finished, and stopped by their client

How requests are answered together: the engine samples one token for every running request per
step. Requests to one model that arrive together share a batch (rows of a KV cache, as in
GPT.generate, each row with its own temperature, top_k, top_p and max_tokens). A request that
arrives while others stream starts its own batch at the next step: it never waits for them to end.
A row leaves its batch at <|end|>, at its max_tokens, or as soon as its client is gone.
"""
import codecs
import hmac
import json
import os
import queue
import random
import select
import socket
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from glob import glob
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import torch
import torch.nn.functional as F

from data import tasks
from model import (STAGES, configure, drop_rows, load_checkpoint, load_tokenizer, made_by,
                   newest_turns, prompt_tokens, sample, score_pairs, setup, token_text)

# ----------------------------------------------------------------------------- config
out_dir = 'out'           # the chain's output folder: every <stage>/ckpt.pt under it is served
host = '127.0.0.1'        # the address to listen on; '0.0.0.0' lets other machines in
port = 8000               # 0: any free port (the address is printed)
api_key = ''              # non-empty: every /v1 call needs "Authorization: Bearer <api_key>"
max_tokens = 256          # an answer's most tokens when a request does not say (context allowing)
temperature = 0.8         # when a request does not say; 0 = greedy
max_rows = 64             # requests written at once; more wait for a free row
max_body = 1_000_000      # bytes: a larger request gets 413
threads = 0               # the engine's CPU threads; 0: all cores but one (one for HTTP threads)
device = 'auto'           # 'auto', 'cpu', 'cuda', 'mps'
dtype = 'auto'            # 'auto', 'float32', 'bfloat16'
seed = 1337
# -----------------------------------------------------------------------------

KINDS = list(tasks.KIND_SHARES)


class ApiError(Exception):
    """A request the server refuses: its HTTP status and OpenAI's error fields."""

    def __init__(self, status, message, param=None, code=None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code
        self.type = 'authentication_error' if status == 401 else 'server_error' \
            if status >= 500 else 'invalid_request_error'


@dataclass
class Request:
    """One answer to write: the model, the prompt's tokens and the sampling settings go in; the
    engine puts each new token on out, then None (or an exception if writing failed)."""
    model: object         # the GPT
    tokens: list
    end: int              # its <|end|> token
    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    out: queue.Queue = field(default_factory=queue.Queue)
    left: bool = False    # its client has gone: the engine drops the row
    written: list = field(default_factory=list)  # the tokens its client was sent (pieces)


# ----------------------------------------------------------------------------- the checkpoints


def policy_checkpoints(out_dir, seen):
    """{name: path} of out_dir's chat models: <name>/ckpt.pt (and <a>/<b>/ckpt.pt, named 'a/b')
    holding a finished policy, not a reward or value model (a scalar head). seen: a cache of each
    file's verdict by (path, modification time), so a listing does not read every file again."""
    found, rank = {}, {stage: i for i, stage in enumerate(STAGES)}
    for path in glob(os.path.join(out_dir, '*', 'ckpt.pt')) + \
            glob(os.path.join(out_dir, '*', '*', 'ckpt.pt')):
        try:
            key = (path, os.path.getmtime(path))
            if key not in seen:
                ckpt = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
                seen[key] = not ckpt['model_args'].get('scalar_head') and \
                    ckpt.get('finished') is not False
        except Exception:  # (a file being written or deleted, or not a checkpoint)
            continue
        if seen[key]:
            found[os.path.relpath(os.path.dirname(path), out_dir).replace(os.sep, '/')] = path
    # the chain's order first (STAGES), then the rest by name
    return dict(sorted(found.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0])))


def load(loaded, lock, path, device, scalar_head=False):
    """(model, tokenizer, checkpoint) of path, read once (again if the file changed) and kept in
    loaded; ApiError if it fails."""
    with lock:
        try:
            key = (path, os.path.getmtime(path))
            if key not in loaded:
                model, ckpt = load_checkpoint(path, made_by(path), device, scalar_head)
                loaded[key] = (model.eval(), load_tokenizer(ckpt['tokenizer']), ckpt)
        except (SystemExit, OSError) as e:  # (load_checkpoint's, load_tokenizer's own errors)
            raise ApiError(500, str(getattr(e, 'code', e)), code='checkpoint_unreadable')
        return loaded[key]


# ----------------------------------------------------------------------------- reading a request


def number(body, key, default, kind, low, high):
    """body[key] (default when absent or null), checked to be a kind in [low, high]."""
    value = body.get(key)
    if value is None:
        return default
    if type(value) not in ((int,) if kind is int else (int, float)) or not low <= value <= high:
        raise ApiError(400, f'{key} must be {"an integer" if kind is int else "a number"} '
                       f'from {low} to {high}, not {json.dumps(value)}', param=key)
    return kind(value)


def text_of(content, i):
    """A message's content: a string, or OpenAI's list of {'type': 'text', 'text': ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get('type') == 'text' and
                                         isinstance(p.get('text'), str) for p in content):
        return ''.join(p['text'] for p in content)
    raise ApiError(400, f'messages[{i}].content must be a string or a list of text parts',
                   param=f'messages[{i}].content')


def read_chat(body, names, default_temperature):
    """A chat completion request's (model name, messages, settings), or ApiError saying what is
    wrong. System messages are left out: no stage was trained with one."""
    if not isinstance(body.get('model'), str):
        raise ApiError(400, 'model must be a string: one of ' + ', '.join(names), param='model')
    if body['model'] not in names:
        raise ApiError(404, f'model {body["model"]!r} not found; the models here: '
                       + ', '.join(names), param='model', code='model_not_found')
    messages = body.get('messages')
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, 'messages must be a non-empty list', param='messages')
    conversation = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get('role') not in ('system', 'user', 'assistant'):
            raise ApiError(400, f"messages[{i}] must be an object with a role 'system', 'user' "
                           "or 'assistant'", param=f'messages[{i}]')
        if m['role'] != 'system':
            conversation.append(dict(role=m['role'], content=text_of(m.get('content'), i)))
    if not conversation or conversation[-1]['role'] != 'user':
        raise ApiError(400, "the last message must be the user's", param='messages')
    number(body, 'n', 1, int, 1, 1)  # (one answer per request)
    if body.get('stop'):
        raise ApiError(400, 'stop sequences are not supported', param='stop')
    if not isinstance(body.get('stream', False), bool):
        raise ApiError(400, 'stream must be true or false', param='stream')
    settings = dict(temperature=number(body, 'temperature', default_temperature, float, 0, 2),
                    top_p=number(body, 'top_p', 1.0, float, 0, 1),
                    top_k=number(body, 'top_k', 0, int, 0, 1 << 30),
                    max_tokens=number(body, 'max_completion_tokens',
                                      number(body, 'max_tokens', None, int, 1, 1 << 30),
                                      int, 1, 1 << 30))
    return body['model'], conversation, settings


# ----------------------------------------------------------------------------- the engine


def next_tokens(logits, temperature, top_k, top_p):
    """One token per row of logits (B, vocab), each row with its own settings ((B,) tensors):
    the likeliest where temperature is 0; else one sampled at that temperature from the top_k
    likeliest tokens (0: all) whose probabilities, likeliest first, sum to top_p (the nucleus of
    Holtzman et al. 2020; the likeliest token always stays in)."""
    greedy = logits.argmax(dim=-1)
    if (temperature == 0).all():
        return greedy
    ordered, order = logits.sort(dim=-1, descending=True)
    probs = F.softmax(ordered / temperature.clamp(min=1e-4)[:, None], dim=-1)
    rank = torch.arange(logits.size(-1), device=logits.device)[None, :]
    keep = ((rank < top_k[:, None]) | (top_k[:, None] == 0)) & \
        (probs.cumsum(dim=-1) - probs < top_p[:, None])
    keep[:, 0] = True  # (top_p=0 too)
    sampled = order.gather(1, sample(probs * keep))[:, 0]
    return torch.where(temperature == 0, greedy, sampled)


def start_batch(model, requests, device):
    """A batch of requests to one model: the prompts, left-padded, and a KV cache for them."""
    dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) \
        else model.wte.weight.dtype
    longest = max(len(r.tokens) for r in requests)
    n_pad = torch.tensor([longest - len(r.tokens) for r in requests], device=device)
    idx = torch.tensor([[0] * (longest - len(r.tokens)) + r.tokens for r in requests],
                       device=device)
    cache = model.new_cache(n_pad, longest + max(r.max_tokens for r in requests) - 1, dtype)
    rows = dict(n_pad=n_pad, written=torch.zeros_like(n_pad), **{
        key: torch.tensor([getattr(r, key) for r in requests], device=device)
        for key in ('max_tokens', 'temperature', 'top_k', 'top_p')})
    return dict(model=model, requests=list(requests), idx=idx, cache=cache, rows=rows,
                end=requests[0].end)


@torch.no_grad()
def step(batch):
    """One new token for every request of the batch (GPT.generate's loop, one turn of it); the
    rows that end (<|end|>, max_tokens, client gone) leave. Returns the requests that ended."""
    model, rows, requests = batch['model'], batch['rows'], batch['requests']
    hidden = model.hidden(batch['idx'], rows['n_pad'], batch['cache'])[:, -1]
    new = next_tokens(model.lm_head(hidden).float(), rows['temperature'], rows['top_k'],
                      rows['top_p'])
    rows['written'] += 1
    for request, token in zip(requests, new.tolist()):
        request.out.put(token)
    left = torch.tensor([r.left for r in requests], device=new.device)
    going = (new != batch['end']) & (rows['written'] < rows['max_tokens']) & ~left
    ended = [r for r, g in zip(requests, going.tolist()) if not g]
    if ended:
        order = drop_rows(batch['cache'], going)
        batch['requests'] = [requests[i] for i in order.tolist()]
        batch['rows'] = {key: value[order] for key, value in rows.items()}
        new = new[order]
    batch['idx'] = new[:, None]
    return ended


def merge(a, b, block_size):
    """Batches a and b of one model (each past its prompts) as one, or None where they do not fit
    in block_size: the one that has read fewer positions moves right (more left padding), so
    that every row's next token goes in at the same position."""
    filled = max(a['cache']['len'], b['cache']['len'])
    rows = {key: torch.cat([a['rows'][key], b['rows'][key]]) for key in a['rows']}
    length = filled + int((rows['max_tokens'] - rows['written']).max())  # every token it reads
    if length > block_size:
        return None
    kv_a, kv_b = a['cache']['kv'], b['cache']['kv']
    shape = list(kv_a.shape)  # (layers, 2, B, heads, length, head_dim)
    shape[2], shape[4] = len(rows['n_pad']), length
    kv = kv_a.new_zeros(shape)  # (not empty: padding gets attention 0, and 0 * NaN is NaN)
    for kv_old, where, shift in ((kv_a, slice(0, kv_a.size(2)), filled - a['cache']['len']),
                                 (kv_b, slice(kv_a.size(2), None), filled - b['cache']['len'])):
        kv[:, :, where, :, shift:filled] = kv_old[:, :, :, :, :filled - shift]
    rows['n_pad'] = torch.cat([a['rows']['n_pad'] + filled - a['cache']['len'],
                               b['rows']['n_pad'] + filled - b['cache']['len']])
    real = torch.arange(length, device=kv.device)[None, :] >= rows['n_pad'][:, None]
    return dict(a, requests=a['requests'] + b['requests'], idx=torch.cat([a['idx'], b['idx']]),
                rows=rows, cache=dict(kv=kv, real=real, len=filled))


def advance(state, batch, autocast):
    """One step of a batch (step), its ended requests told (None; or the error, if it failed)."""
    try:
        with autocast:
            ended = step(batch)
    except Exception as e:  # the batch's requests get the error; the engine goes on
        traceback.print_exc()
        ended, batch['requests'] = batch['requests'], []
        for request in ended:
            request.out.put(e)
    for request in ended:
        request.out.put(None)
        state['stopped' if request.left else 'finished'] += 1


def engine(state, max_rows, device, autocast):
    """The engine thread, forever: reads the prompts of the waiting requests (while rows are
    free), one new batch per model, and joins each new batch to its model's running one where
    they fit; then gives every running batch one step."""
    device = torch.device(device)
    while True:
        with state['lock']:
            while not state['waiting'] and not state['batches']:
                state['lock'].wait()
            room = max_rows - sum(len(b['requests']) for b in state['batches'])
            new, state['waiting'] = state['waiting'][:room], state['waiting'][room:]
            state['taken'] += len(new)
        for request in [r for r in new if r.left]:  # its client left while it waited
            request.out.put(None)
            state['stopped'] += 1
        new = [r for r in new if not r.left]
        batches = state['batches']
        for model in dict.fromkeys(r.model for r in new):
            try:
                with autocast:
                    batch = start_batch(model, [r for r in new if r.model is model], device)
                advance(state, batch, autocast)  # its prompts read: the first token of each
                running = [i for i, b in enumerate(batches) if b['model'] is model]
                joined = running and batch['requests'] and \
                    merge(batches[running[0]], batch, model.config.block_size)
            except Exception as e:  # (out of memory, say): these requests get the error
                traceback.print_exc()
                batch, joined = dict(requests=[]), None
                for request in [r for r in new if r.model is model]:
                    request.out.put(e)
                    state['finished'] += 1
            if joined:
                batches[running[0]] = joined
            elif batch['requests']:
                batches.append(batch)
        for batch in batches:
            advance(state, batch, autocast)
        with state['lock']:
            state['batches'] = [b for b in batches if b['requests']]


# ----------------------------------------------------------------------------- answering


def client_gone(connection):
    """True when the client has closed its end of the connection."""
    try:
        readable = select.select([connection], [], [], 0)[0]
        return bool(readable) and connection.recv(1, socket.MSG_PEEK) == b''
    except OSError:
        return True


def pieces(request, enc, connection):
    """The answer's text as its tokens arrive, piece by piece (a character split across tokens
    comes whole); marks the request as left when the client has gone."""
    utf8, checked = codecs.getincrementaldecoder('utf-8')('replace'), 0.0
    while True:
        try:
            token = request.out.get(timeout=0.2)
        except queue.Empty:
            token = ''
        if time.monotonic() - checked > 0.2:  # (a client that left is seen within 0.2 s)
            checked = time.monotonic()
            if client_gone(connection):
                request.left = True
                return
        if token is None:
            break
        if isinstance(token, Exception):
            raise ApiError(500, f'writing the answer failed: {token}')
        if token != '':
            request.written.append(token)
            yield token_text(enc, utf8, token)
    yield utf8.decode(b'', final=True)


def finish_reason(request, end):
    return 'stop' if request.written and request.written[-1] == end else 'length'


def chunk(ident, name, delta, reason=None):
    """One server-sent event of a streamed answer, OpenAI's chat.completion.chunk."""
    event = dict(id=ident, object='chat.completion.chunk', created=int(time.time()), model=name,
                 choices=[dict(index=0, delta=delta, finish_reason=reason)])
    return f'data: {json.dumps(event, ensure_ascii=False)}\n\n'.encode()


class Handler(BaseHTTPRequestHandler):
    """Answers one connection's requests; the server's app dict holds what they share."""
    protocol_version = 'HTTP/1.1'
    server_version = 'serve.py'
    timeout = 300  # seconds a connection may sit silent (or not read what it is sent)

    def do_GET(self):
        self.answer('GET')

    def do_POST(self):
        self.answer('POST')

    def answer(self, method):
        """Routes a request; any failure becomes an OpenAI-style JSON error, never a traceback."""
        app, path = self.server.app, urlparse(self.path).path
        try:
            if path.startswith('/v1/') and app['api_key'] and not hmac.compare_digest(
                    self.headers.get('Authorization', ''), f'Bearer {app["api_key"]}'):
                raise ApiError(401, 'a valid API key is needed: Authorization: Bearer <key>',
                               code='invalid_api_key')
            routes = {('GET', '/'): self.page, ('GET', '/health'): self.health,
                      ('GET', '/v1/models'): self.models, ('GET', '/v1/prompt'): self.prompt,
                      ('POST', '/v1/chat/completions'): self.chat,
                      ('POST', '/v1/judge'): self.judge}
            if (method, path) not in routes:
                raise ApiError(404, f'no {method} {path} here', code='unknown_url')
            routes[method, path]()
        except ApiError as e:
            self.send_json(e.status, dict(error=dict(message=str(e), type=e.type, param=e.param,
                                                     code=e.code)))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client left
        except Exception as e:  # a bug: logged here, a 500 there, and the server goes on
            traceback.print_exc()
            self.send_json(500, dict(error=dict(message=f'internal error: {e}', type='server_error',
                                                param=None, code=None)))

    def send_json(self, status, obj):
        body = json.dumps(obj, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def read_body(self):
        """The request's JSON object, or ApiError: 411 without a length, 413 over max_body."""
        try:
            length = int(self.headers.get('Content-Length', ''))
            if length < 0:
                raise ValueError(length)
        except ValueError:
            self.close_connection = True
            raise ApiError(411, 'a request body needs a Content-Length')
        if length > self.server.app['max_body']:
            self.close_connection = True  # (the body is not read)
            raise ApiError(413, f'the request body is {length} bytes; at most '
                           f'{self.server.app["max_body"]} are read (--max_body)')
        try:
            body = json.loads(self.rfile.read(length))
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f'the request body is not valid JSON: {e}')
        if not isinstance(body, dict):
            raise ApiError(400, 'the request body must be a JSON object')
        return body

    def policy(self, name):
        """(model, tokenizer, checkpoint) of a served model's name, loaded on first use."""
        app = self.server.app
        names = policy_checkpoints(app['out_dir'], app['seen'])
        if name not in names:
            raise ApiError(404, f'model {name!r} not found; the models here: ' +
                           ', '.join(names), param='model', code='model_not_found')
        return load(app['loaded'], app['load_lock'], names[name], app['device'])

    def page(self):
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'serve.html'),
                  'rb') as f:
            body = f.read()
        self.send_response(200)
        self.send_header('Content-Type', 'text/html; charset=utf-8')
        self.send_header('Content-Length', str(len(body)))
        self.send_header('X-Content-Type-Options', 'nosniff')
        self.end_headers()
        self.wfile.write(body)

    def health(self):
        state = self.server.app['state']
        with state['lock']:
            self.send_json(200, dict(
                status='ok', running=state['taken'] - state['finished'] - state['stopped'],
                waiting=len(state['waiting']), finished=state['finished'],
                stopped=state['stopped']))

    def models(self):
        app = self.server.app
        names = policy_checkpoints(app['out_dir'], app['seen'])
        self.send_json(200, dict(object='list', data=[
            dict(id=name, object='model', created=int(os.path.getmtime(path)), owned_by='you')
            for name, path in names.items()]))

    def prompt(self):
        """A random held-out prompt of the world: ?kind=...&split=a|b|c|d&model=... (its world)."""
        query = {k: v[-1] for k, v in parse_qs(urlparse(self.path).query).items()}
        kind, split = query.get('kind', 'harmful'), query.get('split', 'a')
        if kind not in KINDS or split not in tasks.GENERALISATION:
            raise ApiError(400, f'kind must be one of {", ".join(KINDS)} and split one of '
                           f'{", ".join(tasks.GENERALISATION)}')
        world = self.world(query.get('model', 'sft'))
        prompt = tasks.draw(world, random.Random(query.get('seed')), kind, 'eval', part=split)
        return self.send_json(200, dict(prompt=prompt, kind=kind, split=split))

    def world(self, name):
        """The world (and its gold judge) that the named model learned from; ApiError if none."""
        ckpt = self.policy(name)[2]
        world = tasks.load_world(ckpt.get('data_dir', ''))
        if world is None:
            raise ApiError(404, f'{name} learned from your own text: no world, no gold judge')
        return world

    def judge(self):
        """{model, prompt, answer}: the gold judge's score and the criteria the answer failed (for
        a prompt of the world's tasks), and the score of the reward model beside the model."""
        app, body = self.server.app, self.read_body()
        if not all(isinstance(body.get(k), str) for k in ('model', 'prompt', 'answer')):
            raise ApiError(400, 'model, prompt and answer must be strings')
        result = dict(gold=None, criteria=None, failed=None, reward=None, reward_model=None)
        try:
            result['gold'], result['criteria'] = tasks.score(self.world(body['model']),
                                                             body['prompt'], body['answer'])
            result['failed'] = [k for k, v in result['criteria'].items() if v < 1]
        except (ApiError, ValueError):
            pass  # not a task of a world: no gold score
        rm_name = '/'.join(body['model'].split('/')[:-1] + ['reward'])
        rm_path = os.path.join(app['out_dir'], rm_name, 'ckpt.pt')
        if os.path.exists(rm_path):
            rm, enc, _ = load(app['loaded'], app['load_lock'], rm_path, app['device'], True)
            result['reward'] = score_pairs(rm, enc, [(body['prompt'], body['answer'])],
                                           app['autocast'], app['device'])[0]
            result['reward_model'] = rm_name
        self.send_json(200, result)

    def chat(self):
        """POST /v1/chat/completions: the answer streamed as server-sent events, or in one JSON."""
        app, body = self.server.app, self.read_body()
        names = list(policy_checkpoints(app['out_dir'], app['seen']))
        name, messages, settings = read_chat(body, names, app['temperature'])
        model, enc, _ = self.policy(name)
        block_size, wanted = model.config.block_size, settings.pop('max_tokens')
        kept = newest_turns(enc, messages, block_size, wanted or app['max_tokens'])
        if kept is None:
            raise ApiError(400, f'the last message is longer than {name} reads (block_size='
                           f'{block_size} tokens)', param='messages',
                           code='context_length_exceeded')
        tokens, end = prompt_tokens(enc, kept), enc.encode_single_token('<|end|>')
        room = min(wanted or app['max_tokens'], block_size - len(tokens) + 1)
        request, state = Request(model, tokens, end, room, **settings), app['state']
        with state['lock']:
            state['waiting'].append(request)
            state['lock'].notify()
        ident = f'chatcmpl-{uuid.uuid4().hex}'
        if body.get('stream'):
            return self.stream(request, enc, name, ident, body.get('stream_options') or {})
        text = ''.join(pieces(request, enc, self.connection))
        if request.left:
            return
        usage = dict(prompt_tokens=len(tokens), completion_tokens=len(request.written),
                     total_tokens=len(tokens) + len(request.written))
        self.send_json(200, dict(id=ident, object='chat.completion', created=int(time.time()),
                                 model=name, usage=usage, choices=[dict(
                                     index=0, message=dict(role='assistant', content=text),
                                     finish_reason=finish_reason(request, end))]))

    def stream(self, request, enc, name, ident, options):
        """The answer as server-sent events: the role, each piece of text, the finish reason (and
        usage if stream_options asks), then [DONE]. A client that leaves stops its row."""
        self.send_response(200)
        self.send_header('Content-Type', 'text/event-stream')
        self.send_header('Cache-Control', 'no-cache')
        self.send_header('Connection', 'close')  # the stream ends when the connection does
        self.end_headers()
        self.close_connection = True
        try:
            self.wfile.write(chunk(ident, name, dict(role='assistant', content='')))
            for piece in pieces(request, enc, self.connection):
                if piece:
                    self.wfile.write(chunk(ident, name, dict(content=piece)))
                    self.wfile.flush()
            if request.left:
                return
            end = enc.encode_single_token('<|end|>')
            self.wfile.write(chunk(ident, name, {}, finish_reason(request, end)))
            if isinstance(options, dict) and options.get('include_usage'):
                n, m = len(request.tokens), len(request.written)
                event = dict(id=ident, object='chat.completion.chunk', created=int(time.time()),
                             model=name, choices=[], usage=dict(
                                 prompt_tokens=n, completion_tokens=m, total_tokens=n + m))
                self.wfile.write(f'data: {json.dumps(event)}\n\n'.encode())
            self.wfile.write(b'data: [DONE]\n\n')
        except (BrokenPipeError, ConnectionResetError):
            request.left = True
        except ApiError as e:  # (the status is sent already: the error goes in the stream)
            error = dict(error=dict(message=str(e), type='server_error'))
            self.wfile.write(f'data: {json.dumps(error)}\n\n'.encode())


class Server(ThreadingHTTPServer):
    daemon_threads = True        # a connection's thread does not keep the server from stopping
    request_queue_size = 256     # connections waiting to be accepted (the default 5 drops more)


def main():
    configure(globals())
    _, _, dev, autocast = setup(device, dtype, seed)
    torch.set_num_threads(threads or max(1, torch.get_num_threads() - 1))
    key = api_key or os.environ.get('SERVE_API_KEY', '')
    if not os.path.isdir(out_dir):
        sys.exit(f'error: {out_dir} not found: run bash run.sh first (or set --out_dir)')
    seen = {}
    names = policy_checkpoints(out_dir, seen)
    if not names:
        sys.exit(f'error: no chat model under {out_dir}: run bash run.sh (or python sft.py) first')
    # the engine's state: requests waiting, batches running, counts; guarded by lock
    state = dict(lock=threading.Condition(), waiting=[], batches=[], taken=0, finished=0,
                 stopped=0)
    threading.Thread(target=engine, args=(state, max_rows, dev, autocast),
                     daemon=True).start()
    try:
        server = Server((host, port), Handler)
    except OSError as e:
        sys.exit(f'error: cannot listen on {host}:{port} ({e.strerror}): choose another --port')
    server.app = dict(out_dir=out_dir, api_key=key, max_body=max_body, max_tokens=max_tokens,
                      temperature=temperature, device=dev, autocast=autocast, state=state,
                      seen=seen, loaded={}, load_lock=threading.Lock())
    print(f'serving {", ".join(names)} from {out_dir} ({dev}) '
          f'at http://{host}:{server.server_port}  (Ctrl-C stops it)', flush=True)
    if key:
        print('API calls need the header  Authorization: Bearer <the key>', flush=True)
    server.serve_forever()


if __name__ == '__main__':
    try:
        main()
    except KeyboardInterrupt:
        print()
