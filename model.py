"""
The one module every stage shares:
  1. the GPT: LLaMA's block (rotary, RMSNorm, SwiGLU), a scalar head for reward and value models
  2. speed devices: faster CPU versions of plain code, each naming the code it replaces
  3. the tokenizer and the chat template (a conversation that fits, text token by token);
     sampling answers to prompts
  4. the --key=value configurator; device, precision and ranks (torchrun, DDP)
  5. files: JSONL, checkpoints, resuming a killed run, the metrics log
  6. training: optimizer, learning-rate schedule, batches, the SFT loop
  7. measuring: an answer's log-probability, the sampled KL to a reference, held-out answers,
     a reward model's scores and its pairwise accuracy; a report's numbers and tables
  8. the stages and the commands that make them
"""
import ast
import base64
import json
import math
import os
import random
import sys
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import tiktoken
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

# ----------------------------------------------------------------------------- 1. the GPT


@dataclass
class GPTConfig:
    vocab_size: int = 2048
    block_size: int = 256   # longest sequence (prompt + answer) the model sees
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    scalar_head: bool = False  # a Linear(n_embd, 1) on the last hidden states: reward, value


class Attention(nn.Module):
    """Causal self-attention with rotary positions (rotate, section 2) on queries and keys."""
    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x, rot, mask, kv, start):
        B, T, C = x.shape
        qk, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).split([2, 1], dim=2)
        q, k = rotate(qk, rot).unbind(2)  # queries and keys turned at once
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.squeeze(2).transpose(1, 2)  # B, H, T, hd
        if kv is not None:  # generate's cache: write this call's keys/values, attend to all so far
            kv[0, :, :, start:start + T], kv[1, :, :, start:start + T] = k, v
            k, v = kv[0, :, :, :start + T], kv[1, :, :, :start + T]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    """SwiGLU (Shazeer 2020): down(silu(gate(x)) * up(x)), 8/3 n_embd wide: GPT-2's parameters."""
    def __init__(self, cfg):
        super().__init__()
        hidden = 64 * math.ceil(8 * cfg.n_embd / 3 / 64)
        self.gate = nn.Linear(cfg.n_embd, hidden, bias=False)
        self.up = nn.Linear(cfg.n_embd, hidden, bias=False)
        self.down = nn.Linear(hidden, cfg.n_embd, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.norm1, self.attn = RMSNorm(cfg.n_embd), Attention(cfg)
        self.norm2, self.mlp = RMSNorm(cfg.n_embd), MLP(cfg)

    def forward(self, x, rot, mask, kv, start):
        x = x + self.attn(self.norm1(x), rot, mask, kv, start)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied input/output embedding, as in GPT-2
        self.scalar_head = nn.Linear(cfg.n_embd, 1) if cfg.scalar_head else None
        head_dim = cfg.n_embd // cfg.n_head
        inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
        angles = torch.outer(torch.arange(cfg.block_size).float(), inv_freq)  # (block_size, hd/2)
        self.register_buffer('rot', torch.polar(torch.ones_like(angles), angles), persistent=False)
        for name, p in self.named_parameters():  # GPT-2 init; residual projections / sqrt(2 L)
            if p.dim() == 2:
                residual = name.endswith(('proj.weight', 'down.weight'))
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer) if residual else 0.02)
            elif name.endswith('bias'):
                nn.init.zeros_(p)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def hidden(self, idx, n_pad=None, cache=None):
        """Final normed hidden states (B, T, n_embd) at every position. n_pad (B,): each row is
        left-padded with that many tokens, which nothing attends to and which are not positions.
        cache: generate's KV cache (new_cache); the call adds idx's keys and values to it."""
        B, T = idx.shape
        start = cache['len'] if cache else 0  # tokens already in the cache
        if start + T > self.config.block_size:
            raise ValueError(f'sequence of {start + T} tokens is longer than '
                             f'block_size={self.config.block_size}')
        if n_pad is None and start == 0:  # plain causal attention (the training path, flash on GPU)
            mask, pos = None, torch.arange(T, device=idx.device)
        else:
            n_pad = torch.zeros(B, dtype=torch.long, device=idx.device) if n_pad is None else n_pad
            query = torch.arange(start, start + T, device=idx.device)
            pos = (query[None, :] - n_pad[:, None]).clamp(min=0)  # (B, T)
            if T == 1 and cache:  # a decode step: the new token sees every key that is not padding
                mask = cache['real'][:, None, None, :start + 1]
            else:  # earlier keys but padding; a padding query sees itself (no NaN rows)
                key = torch.arange(start + T, device=idx.device)[None, None, :]
                mask = (key <= query[None, :, None]) & (key >= n_pad[:, None, None])
                mask = (mask | (key == query[None, :, None]))[:, None]  # (B, 1, T, start+T)
        rot = self.rot[pos][..., None, None, :]  # broadcast to (B, T, 2, heads, head_dim / 2)
        x = self.wte(idx)
        for i, block in enumerate(self.blocks):
            x = block(x, rot, mask, cache['kv'][i] if cache else None, start)
        if cache:
            cache['len'] += T
        return self.norm(x)

    def forward(self, idx, targets=None, n_pad=None):
        """Logits (B, T, vocab) at every position (a scalar head's model: its scalar (B, T)); with
        targets also the mean cross-entropy over targets that are not -1 (none: 0, not NaN), from
        the language model's head, which a scalar head's model keeps (reward.py's ptx_coef)."""
        h = self.hidden(idx, n_pad)
        if self.scalar_head is not None and targets is None:
            return self.scalar_head(h).squeeze(-1).float(), None
        logits = self.lm_head(h)
        if targets is None:
            return logits, None
        return logits, -token_logprobs(logits, targets).sum() / (targets != -1).sum().clamp(min=1)

    def new_cache(self, n_pad, length, dtype):
        """generate's KV cache, allocated once: kv (layers, 2, B, heads, length, head_dim) holds the
        keys and values of each row's first len tokens; real (B, length) marks those not padding."""
        cfg, B = self.config, len(n_pad)
        shape = (cfg.n_layer, 2, B, cfg.n_head, length, cfg.n_embd // cfg.n_head)
        real = torch.arange(length, device=n_pad.device)[None, :] >= n_pad[:, None]
        return dict(kv=torch.empty(shape, dtype=dtype, device=n_pad.device), real=real, len=0)

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens, temperature=1.0, top_k=None, stop_token=None,
                 on_token=None):
        """Samples continuations of prompts (token lists) with a KV cache (temperature 0: greedy).
        Returns (tokens (B, max_new_tokens), lengths (B,)); row b's answer, its stop token included,
        is tokens[b, :lengths[b]]. on_token(rows, tokens): each step's new tokens, to stream them.
        Speed devices (section 2): a prompt asked k times is read once; finished rows leave."""
        device = self.wte.weight.device
        B, longest = len(prompts), max(len(p) for p in prompts)
        if longest + max_new_tokens - 1 > self.config.block_size:
            raise ValueError(f'sequence of {longest + max_new_tokens - 1} tokens is longer than '
                             f'block_size={self.config.block_size}')
        source, distinct = distinct_prompts(prompts, device)
        n_pad = torch.tensor([longest - len(p) for p in distinct], device=device)
        idx = torch.tensor([[0] * (longest - len(p)) + list(p) for p in distinct], device=device)
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) \
            else self.wte.weight.dtype
        cache = self.new_cache(n_pad, longest + max_new_tokens - 1, dtype)
        out = torch.zeros(B, max_new_tokens, dtype=torch.long, device=device)
        lengths = torch.full((B,), max_new_tokens, device=device)
        rows = torch.arange(B, device=device)  # the rows still writing
        for t in range(max_new_tokens):
            logits = self.lm_head(self.hidden(idx, n_pad, cache)[:, -1]).float()  # last position
            if t == 0 and len(distinct) < B:  # each row a copy of its prompt's keys and values
                logits, n_pad, cache = logits[source], n_pad[source], copy_rows(cache, source)
            if temperature == 0:
                idx = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k:  # (None or 0: no top-k)
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float('-inf'))
                idx = sample(F.softmax(logits, dim=-1))
            out[rows, t] = idx[:, 0]
            if on_token is not None:
                on_token(rows, idx[:, 0])
            if stop_token is None:
                continue
            # a row's first stop only; where(), not a mask: no GPU sync per token
            so_far = lengths[rows]
            stopped = (idx[:, 0] == stop_token) & (so_far == max_new_tokens)
            lengths[rows] = torch.where(stopped, t + 1, so_far)
            # finished rows leave at once on a CPU or when streaming; on a GPU every 8 steps
            if device.type == 'cpu' or on_token is not None or t % 8 == 7:
                going = lengths[rows] == max_new_tokens
                if not going.all():
                    order = drop_rows(cache, going)
                    rows, idx, n_pad = rows[order], idx[order], n_pad[order]
                    if len(rows) == 0:
                        break
        return out, lengths

# ----------------------------------------------------------------------------- 2. speed devices


def rotate(x, rot):
    """Rotary position embedding (Su et al. 2021, eq. 34): each pair (x[2i], x[2i+1]) is a complex
    number turned by its position's angle, times rot = e^(i angle), in fp32. Replaces the plain
    (a cos - b sin, a sin + b cos) per pair (tests/test_model.py's reference_llama) on CPUs."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # a view when x is contiguous
    return torch.view_as_real(pairs * rot).flatten(-2).type_as(x)


class RMSNormFunction(torch.autograd.Function):
    """RMSNorm (Zhang & Sennrich 2019, eq. 4): y = x / sqrt(mean(x^2) + eps) * w, nn.RMSNorm's math
    (which it replaces on CPUs, where torch runs six separate ops) in fewer passes over memory. By
    hand, with r = 1 / sqrt(mean(x^2) + eps), x^ = x r, g = dy w: dx = r (g - x^ mean(g x^)) with
    mean(g x^) = (dy x^) . w / n_embd, and dw = the sum over positions of dy x^."""
    @staticmethod
    def forward(ctx, x, weight, eps):
        r = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.size(-1))
        r = r.add_(eps).rsqrt_()
        normed = x * r
        ctx.save_for_backward(normed, weight, r)
        return normed * weight

    @staticmethod
    def backward(ctx, dy):
        normed, weight, r = ctx.saved_tensors
        dy_normed = dy * normed
        mean = (dy_normed @ weight).unsqueeze(-1) / weight.size(0)  # mean(g x^)
        dx = torch.addcmul(dy * weight, normed, mean, value=-1).mul_(r)
        return dx, dy_normed.flatten(0, -2).sum(0), None


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm (same weight, torch's default eps), computed by RMSNormFunction on the CPU."""
    def forward(self, x):
        if x.is_cpu:
            return RMSNormFunction.apply(x, self.weight, torch.finfo(x.dtype).eps)
        return super().forward(x)


def sample(probs):
    """One token per row of probs (B, vocab) by inverse CDF: the first whose cumulative probability
    exceeds u ~ U[0, total). Replaces torch.multinomial(probs, 1): many times faster on a CPU."""
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1:]
    u = torch.rand_like(total) * total
    u = torch.minimum(u, total.nextafter(torch.zeros_like(total)))  # u < total after rounding too
    return torch.searchsorted(cdf, u, right=True)  # never a token of probability 0


def distinct_prompts(prompts, device):
    """(source, distinct): a prompt asked k times is read once where that saves half the rows or
    more (row b copies the keys and values of distinct[source[b]]). Plain: each reads its own."""
    first = {}
    source = torch.tensor([first.setdefault(tuple(p), len(first)) for p in prompts], device=device)
    return source, list(first) if 2 * len(first) <= len(prompts) else prompts


def copy_rows(cache, rows):
    """A new cache holding the given rows (indices into the old rows) of the old one."""
    kv, filled = cache['kv'], cache['len']
    new = kv.new_empty(kv.shape[:2] + (len(rows),) + kv.shape[3:])
    new[:, :, :, :, :filled] = kv[:, :, rows, :, :filled]  # (the filled part only)
    return dict(kv=new, real=cache['real'][rows], len=filled)


def drop_rows(cache, going):
    """Keeps the cache's rows where going is True, in place: the going rows past the first n =
    going.sum() move into the slots of finished rows among the first n. Returns the order of the
    rows kept (indices into the old rows). Plain: finished rows stay, writing filler to the end."""
    n = int(going.sum())
    order, holes = torch.arange(n, device=going.device), (~going[:n]).nonzero().squeeze(1)
    order[holes] = n + going[n:].nonzero().squeeze(1)  # (as many going rows past n as holes)
    kv, filled = cache['kv'], cache['len']
    kv[:, :, holes, :, :filled] = kv[:, :, order[holes], :, :filled]
    cache['kv'], cache['real'] = kv[:, :, :n], cache['real'][order]
    return order

# ----------------------------------------------------------------------------- 3. tokenizer, chat

# GPT-2's pre-tokenizer pattern (Radford et al. 2019): BPE merges never cross these pieces.
SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# <|endoftext|> separates documents; the chat template uses the other three.
SPECIAL_TOKENS = ['<|endoftext|>', '<|user|>', '<|assistant|>', '<|end|>']


def load_tokenizer(name):
    """'gpt2' (tiktoken's) or a ranks file (data/bpe.py); special tokens' ids follow the ranks."""
    if name == 'gpt2':
        base = tiktoken.get_encoding('gpt2')
        ranks, pattern = base._mergeable_ranks, base._pat_str
    else:
        if not os.path.exists(name):
            sys.exit(f'error: tokenizer {name} not found: run python data/prepare.py')
        with open(name) as f:
            pairs = [line.split() for line in f if line.strip()]
        ranks, pattern = {base64.b64decode(t): int(r) for t, r in pairs}, SPLIT_PATTERN
    specials = {tok: len(ranks) + i for i, tok in enumerate(SPECIAL_TOKENS)}
    return tiktoken.Encoding(name=os.path.basename(name), pat_str=pattern, mergeable_ranks=ranks,
                             special_tokens=specials)


# The chat template: <|endoftext|> <|user|> text <|end|> <|assistant|> text <|end|> <|user|> ...
# A conversation is a list of {'role': 'user' or 'assistant', 'content': text}; a prompt is a string
# (one user turn) or such a list ending with the user's turn.
def render_chat(enc, messages):
    """(tokens, trained): the conversation's token ids, and for each whether SFT's loss counts it:
    the assistant's words and its <|end|>, never the user's turn or the <|assistant|> cue."""
    special = enc.encode_single_token
    tokens, trained = [special('<|endoftext|>')], [False]
    for m in messages:
        turn = enc.encode_ordinary(m['content']) + [special('<|end|>')]
        tokens += [special(f'<|{m["role"]}|>')] + turn
        trained += [False] + [m['role'] == 'assistant'] * len(turn)
    return tokens, trained


def as_messages(prompt):
    """A prompt as a conversation: a string is one user turn."""
    return [dict(role='user', content=prompt)] if isinstance(prompt, str) else prompt


def prompt_tokens(enc, prompt):
    """The tokens that ask the model for the assistant's next turn."""
    return render_chat(enc, as_messages(prompt))[0] + [enc.encode_single_token('<|assistant|>')]


def answer_text(enc, tokens):
    """An answer's text: the tokens before the first <|end|>, without special or padding ids."""
    end = enc.encode_single_token('<|end|>')
    tokens = tokens[:tokens.index(end)] if end in tokens else tokens
    return enc.decode([t for t in tokens if t < enc.n_vocab - len(SPECIAL_TOKENS)])


def newest_turns(enc, messages, block_size, max_new_tokens):
    """The newest turns that fit block_size with max_new_tokens; None if the last alone does not."""
    while len(messages) > 1 and len(prompt_tokens(enc, messages)) + max_new_tokens > block_size:
        messages = messages[2:]  # one user turn and the assistant's answer
    return messages if len(prompt_tokens(enc, messages)) < block_size else None


def token_text(enc, utf8, token):
    """The text token adds: '' for a special token or a character's first bytes (utf8: decoder)."""
    if token >= enc.n_vocab - len(SPECIAL_TOKENS):
        return ''
    return utf8.decode(enc.decode_single_token_bytes(token))


def fitting(enc, items, block_size, room, where):
    """The one rule for prompts as they come (every stage): a prompt, a text or a conversation, is
    kept when its tokens leave `room` tokens for the answer in block_size; the others are dropped
    with one line saying so, and if none is left, a one-line error. items: prompts, or rankings
    ({"prompt": ..., "answers": ...}); returns those kept, in order."""
    prompts = [item['prompt'] if isinstance(item, dict) else item for item in items]
    keep = [item for item, p in zip(items, prompts)
            if len(prompt_tokens(enc, p)) + room <= block_size]
    why = (f'longer than {block_size - room} tokens (block_size {block_size} less {room} for the '
           'answer)')
    if items and not keep:
        sys.exit(f'error: {where}: all {len(items):,} prompts are {why}: raise block_size '
                 '(pretrain.py) or lower --max_new_tokens')
    if len(keep) < len(items) and rank_and_size()[0] == 0:
        print(f'{where}: dropped {len(items) - len(keep):,} of {len(items):,} prompts {why}')
    return keep


@torch.no_grad()
def sample_answers(model, enc, prompts, max_new_tokens, temperature=1.0, batch_size=256,
                   progress=None):
    """Answers to prompts (texts or message lists): token lists ending with <|end|> unless they ran
    out of max_new_tokens; prompts of similar length share a batch. progress: a bar's label."""
    model = raw_model(model)
    end, answers = enc.encode_single_token('<|end|>'), [None] * len(prompts)
    tokens = [prompt_tokens(enc, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(tokens[i]))
    for i in tqdm(range(0, len(prompts), batch_size), desc=progress, disable=progress is None,
                  leave=False):
        rows = order[i:i + batch_size]
        room = min(max_new_tokens, model.config.block_size - max(len(tokens[j]) for j in rows))
        out, lengths = model.generate([tokens[j] for j in rows], room, temperature=temperature,
                                      stop_token=end)
        for j, row, n in zip(rows, out.tolist(), lengths.tolist()):
            answers[j] = row[:n]
    return answers

# ----------------------------------------------------------------------------- 4. config, ranks


def configure(defaults, argv=None):
    """A script's lowercase int/float/bool/str globals are its config, set by 'path.py' files of
    `key = value` lines and --key=value, cast to the default's type; returns the config dict."""
    keys = {k: v for k, v in defaults.items() if not k.startswith('_') and k.islower()
            and type(v) in (int, float, bool, str)}
    for arg in sys.argv[1:] if argv is None else argv:
        if arg.startswith('--'):
            key, eq, value = arg[2:].partition('=')
            if not eq:
                sys.exit(f'error: {arg}: write --{key}=VALUE')
            set_key(defaults, keys, key, value, arg)
            continue
        if not os.path.isfile(arg):
            sys.exit(f'error: config file {arg} not found')
        with open(arg) as f:
            tree = ast.parse(f.read(), filename=arg)
        for node in tree.body:
            target = node.targets[0] if isinstance(node, ast.Assign) else None
            if len(getattr(node, 'targets', [])) != 1 or not isinstance(target, ast.Name):
                sys.exit(f'error: {arg}:{node.lineno}: only `key = value` lines are allowed')
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                sys.exit(f'error: {arg}:{node.lineno}: the value must be a literal')
            set_key(defaults, keys, target.id, value, f'{arg}:{node.lineno}')
    return dict(keys)


def set_key(defaults, keys, key, value, where):
    """configure's one assignment: value cast to the type of the key's default, or one error."""
    if key not in keys:
        valid = ', '.join(sorted(keys))
        sys.exit(f'error: {where}: unknown config key {key!r}; valid keys: {valid}')
    kind = type(keys[key])
    try:
        if isinstance(value, str) and kind is bool:
            value = {'true': True, '1': True, 'false': False, '0': False}[value.lower()]
        elif isinstance(value, str) or (kind is float and type(value) is int):
            value = kind(value)
        if type(value) is not kind:
            raise ValueError(value)
    except (ValueError, KeyError):
        sys.exit(f'error: {where}: {key} must be {kind.__name__}, got {value!r}')
    defaults[key] = keys[key] = value


def setup(device='auto', dtype='auto', seed=1337):
    """(rank, world_size, device, autocast) from torchrun's variables; nccl on CUDA, gloo on CPU."""
    rank, local_rank, world_size = (int(os.environ.get(k, d)) for k, d in
                                    (('RANK', 0), ('LOCAL_RANK', 0), ('WORLD_SIZE', 1)))
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else \
            'mps' if torch.backends.mps.is_available() else 'cpu'
    if device not in ('cpu', 'cuda', 'mps') or (device == 'cuda' and not torch.cuda.is_available()):
        sys.exit(f"error: device {device!r} is not available here "
                 "(choose 'auto', 'cpu', 'cuda' or 'mps')")
    if dtype not in ('auto', 'float32', 'bfloat16'):
        sys.exit(f"error: dtype must be 'auto', 'float32' or 'bfloat16', not {dtype!r}")
    if device == 'cuda':
        device = f'cuda:{local_rank}'
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if 'RANK' in os.environ:  # started by torchrun (one process too: the same DDP path)
        dist.init_process_group('nccl' if device.startswith('cuda') else 'gloo')
    torch.manual_seed(seed + rank)
    if dtype == 'auto':  # bf16 where the chip has it: GPUs since Ampere, CPUs with AVX512-BF16
        held = os.environ.get('ATEN_CPU_CAPABILITY') in ('avx2', 'default')  # kernels held to AVX2
        native = torch.cuda.is_bf16_supported() if device.startswith('cuda') else \
            device == 'cpu' and '_bf16' in cpuinfo() and not held
        dtype = 'bfloat16' if native else 'float32'
    autocast = torch.autocast(device.split(':')[0], dtype=torch.bfloat16) \
        if dtype == 'bfloat16' else nullcontext()
    return rank, world_size, device, autocast


def cpuinfo():
    """/proc/cpuinfo: clock and feature flags (avx512_bf16, ...); '' where there is none."""
    try:
        with open('/proc/cpuinfo') as f:
            return f.read()
    except OSError:
        return ''


def rank_and_size():
    """(this process's rank, the number of processes): (0, 1) without torchrun."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def wrap(model, device, compile=False):
    """The model a training step calls: compiled (on CUDA, if asked), in DDP under torchrun."""
    if compile and device.startswith('cuda'):
        model = torch.compile(model)
    if dist.is_initialized():
        gpu = device.startswith('cuda')
        model = DDP(model, device_ids=[torch.device(device).index] if gpu else None)
    return model


def all_gather(items):
    """Every rank's list, concatenated in rank order (the list itself with one process)."""
    if not dist.is_initialized():
        return list(items)
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(items))
    return [x for part in parts for x in part]


def all_mean(x):
    """Mean of a float over all ranks (the float itself with one process)."""
    if not dist.is_initialized():
        return float(x)
    t = torch.tensor(float(x), device='cuda' if dist.get_backend() == 'nccl' else 'cpu')
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def teardown():
    if dist.is_initialized():
        dist.barrier()  # every rank done with its collectives before the group goes
        dist.destroy_process_group()

# ----------------------------------------------------------------------------- 5. files


def raw_model(model):
    """The plain GPT inside a DDP and/or torch.compile wrapper."""
    model = getattr(model, 'module', model)
    return getattr(model, '_orig_mod', model)


def save_checkpoint(path, model, **extra):
    """Atomic: a kill during the write leaves the previous checkpoint intact."""
    model = raw_model(model)
    ckpt = dict(model=model.state_dict(), model_args=asdict(model.config), **extra)
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    torch.save(ckpt, path + '.tmp')
    os.replace(path + '.tmp', path)


def input_stamps(paths):
    """{path: [size, modification time]} of the files a run reads (a resumed run reads the same)."""
    return {path: [os.path.getsize(path), os.stat(path).st_mtime_ns] for path in paths}


def save_progress(path, model, inputs, **state):
    """A checkpoint that a killed run goes on from (resumable): state (weights, optimizer, step,
    ...), finished=False, the input stamps and every rank's random state (CPU and GPU), so the run
    goes on drawing what it would have drawn. Every rank calls it; rank 0 writes."""
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
    rng = all_gather([dict(cpu=torch.get_rng_state(), cuda=cuda)])
    if rank_and_size()[0] == 0:
        save_checkpoint(path, model, finished=False, inputs=input_stamps(inputs), rng=rng, **state)


def resumable(out_dir, config, inputs, device='cpu'):
    """The checkpoint a killed run of this command left (save_progress), its random state restored;
    or None (start over): none, a finished run's, or a run's with another config or inputs."""
    path = os.path.join(out_dir, 'ckpt.pt')
    if not os.path.exists(path):
        return None
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        sys.exit(f'error: {path} is not a readable checkpoint ({unreadable(e)}); delete it')
    if ckpt.get('finished', True):
        return None
    changed = [k for k in config if ckpt['config'].get(k) != config[k]]
    if changed or ckpt['inputs'] != input_stamps(inputs):
        why = ', '.join(f'{k} was {ckpt["config"].get(k)!r}' for k in changed) or \
            'its input checkpoints changed since'
        print(f'{path}: an unfinished run of another command ({why}): starting over')
        return None
    rank, world_size = rank_and_size()
    if len(ckpt['rng']) == world_size:  # (with another number of ranks: left as seeded)
        torch.set_rng_state(ckpt['rng'][rank]['cpu'].cpu())  # (map_location may put it on a GPU)
        if ckpt['rng'][rank]['cuda'] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(ckpt['rng'][rank]['cuda'].cpu())
    return ckpt


def load_checkpoint(path, made_by, device='cpu', scalar_head=None):
    """(model, ckpt) of out/<stage>/ckpt.pt, loaded as data (weights_only). made_by: the command
    that writes it, for the errors. scalar_head True/False: with/without one, whatever the
    checkpoint had (a new head starts at zero output): a reward or value model from a policy."""
    if not os.path.exists(path):
        sys.exit(f'error: {path} not found: run {made_by} first')
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
        if ckpt.get('finished') is False:  # (pretrain.py's, usable at every step, have no flag)
            sys.exit(f'error: {path} is from a run that has not finished (killed?): '
                     f'run {made_by} again, it continues')
        args = dict(ckpt['model_args'])
        args['scalar_head'] = args['scalar_head'] if scalar_head is None else scalar_head
        model = GPT(GPTConfig(**args))
        state = {k.removeprefix('_orig_mod.'): v for k, v in ckpt['model'].items()}
        if not args['scalar_head']:
            state = {k: v for k, v in state.items() if not k.startswith('scalar_head.')}
        elif 'scalar_head.weight' not in state:
            nn.init.zeros_(model.scalar_head.weight)
            state.update({k: v for k, v in model.state_dict().items() if k.startswith('scalar_')})
        model.load_state_dict(state)
    except Exception as e:
        sys.exit(f'error: {path} is not a readable checkpoint ({unreadable(e)}); '
                 f'delete it and run {made_by} again')
    return model.to(device), ckpt


def unreadable(e):
    return f'{type(e).__name__}: {str(e)[:200]}'


def keep_metrics(path, start):
    """Keeps the log rows that a run resumed at step `start` (0: none) will not write again."""
    rows = []
    if start and os.path.exists(path):
        with open(path) as f:
            rows = [line for line in f if line.endswith('\n') and json.loads(line)['iter'] < start]
    with open(path, 'w') as f:
        f.writelines(rows)


def log_row(path, row):
    """One row of a stage's metrics log (metrics.jsonl): a JSON line, written by rank 0."""
    if rank_and_size()[0] == 0:
        with open(path, 'a') as f:
            f.write(json.dumps(row) + '\n')

# ----------------------------------------------------------------------------- 6. training


def make_optimizer(model, lr, weight_decay, device):
    """AdamW; weight decay on matrices and embeddings only, never on norms and biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [dict(params=[p for p in params if p.dim() >= 2], weight_decay=weight_decay),
              dict(params=[p for p in params if p.dim() < 2], weight_decay=0.0)]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=device.startswith('cuda'))


def lr_at(it, lr, min_lr, warmup_iters, max_iters):
    """Linear warmup to lr over warmup_iters, then cosine decay to min_lr at max_iters."""
    if it < warmup_iters:
        return lr * (it + 1) / warmup_iters
    progress = min(1.0, (it - warmup_iters) / max(1, max_iters - warmup_iters))
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group['lr'] = lr


def tokenize(enc, conversations, block_size):
    """(inputs, targets) per conversation, cut to block_size: the targets are the next tokens,
    -1 where the loss must not look (the prompt, the <|assistant|> cue)."""
    examples = []
    for messages in conversations:
        tokens, trained = render_chat(enc, messages)
        tokens, trained = tokens[:block_size + 1], trained[:block_size + 1]
        targets = [t if keep else -1 for t, keep in zip(tokens[1:], trained[1:])]
        examples.append((tokens[:-1], targets))
    return examples


def answer_examples(enc, prompts, answers, block_size):
    """Each (prompt, answer) as an SFT example: the loss, and the log-probability, on the answer."""
    return tokenize(enc, [as_messages(p) + [dict(role='assistant', content=a)]
                          for p, a in zip(prompts, answers)], block_size)


def collate(examples, ids, device):
    """A batch padded on the right to its longest example (padding: token 0, target -1)."""
    longest = max(len(examples[i][0]) for i in ids)
    pad = [longest - len(examples[i][0]) for i in ids]
    x = torch.tensor([examples[i][0] + [0] * n for i, n in zip(ids, pad)], device=device)
    y = torch.tensor([examples[i][1] + [-1] * n for i, n in zip(ids, pad)], device=device)
    return x, y


def batches(lengths, batch_size, seed):
    """One epoch of batches (lists of indices) bucketed by length: shuffle, sort each run of 32
    batches by length, cut it into batches, shuffle the batches. Little padding, random order."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    out = []
    for i in range(0, len(order), 32 * batch_size):
        run = sorted(order[i:i + 32 * batch_size], key=lambda j: lengths[j])
        out += [run[k:k + batch_size] for k in range(0, len(run), batch_size)]
    rng.shuffle(out)
    return out


def epoch_batch(it, lengths, batch_size, seed):
    """This rank's batch at step it: number it * world_size + rank of the epochs of batches(), each
    in its own order (seed + epoch): a resumed run sees the data as a run never killed would."""
    rank, world_size = rank_and_size()
    n_batches = max(1, len(lengths) // batch_size)
    number = it * world_size + rank
    return batches(lengths, batch_size, seed + number // n_batches)[number % n_batches]


def finetune(model, optimizer, examples, iters, batch_size, lr, min_lr, warmup_iters, autocast,
             device, grad_clip=1.0, seed=0, start=0, desc='sft'):
    """The SFT loop of sft.py and bestofk.py: the masked next-token loss, warmup + cosine learning
    rate, each rank its length-bucketed batch. A generator: yields the steps done after each step
    (to evaluate or save); a resumed run starts at `start` with its saved optimizer state."""
    lengths = [len(x) for x, _ in examples]
    bar = tqdm(range(start, iters), desc=desc, initial=start, total=iters,
               disable=rank_and_size()[0] != 0, dynamic_ncols=True)
    for it in bar:
        x, y = collate(examples, epoch_batch(it, lengths, batch_size, seed), device)
        set_lr(optimizer, lr_at(it, lr, min_lr, warmup_iters, iters))
        with autocast:
            loss = model(x, y)[1]
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if it % 10 == 0:
            bar.set_postfix(loss=f'{loss.item():.3f}')
        yield it + 1


def flops_per_token(model):
    """Training FLOPs per token: 6 N for the matmuls plus 12 L d T for attention (PaLM, app. B)."""
    cfg = raw_model(model).config
    return 6 * raw_model(model).num_params() + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size


def peak_flops(device, bf16):
    """Dense peak FLOP/s, for MFU. GPUs: bf16 tensor-core peaks of the data sheets; CPUs: cores x
    clock x fp32 FLOPs per cycle (AVX-512: 64, AVX2: 32), twice that in bf16; a rough figure."""
    if device.startswith('cuda'):
        name = torch.cuda.get_device_name(device)
        for gpu, peak in (('H200', 989e12), ('H100', 989e12), ('A100', 312e12), ('L4', 121e12),
                          ('4090', 165e12), ('3090', 71e12)):
            if gpu in name:
                return peak
        return float('nan')
    info = cpuinfo()
    mhz = [float(line.split(':')[1]) for line in info.splitlines() if line.startswith('cpu MHz')]
    if not mhz:
        return float('nan')
    per_cycle = (64 if ' avx512f' in info else 32 if ' fma' in info else 8) * (2 if bf16 else 1)
    return torch.get_num_threads() * max(mhz) * 1e6 * per_cycle

# ----------------------------------------------------------------------------- 7. measuring


def token_logprobs(logits, targets):
    """log p(target) of each target (B, T) under logits (B, T, vocab), in fp32; 0 where it is -1."""
    losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1,
                             reduction='none')
    return -losses.view_as(targets)


def sequence_logprobs(model, examples, device, chunk=16):
    """log p(answer | prompt) of each example (answer_examples), summed over the answer's tokens and
    its <|end|>; in runs of chunk examples of similar length, returned in order. With gradient."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    out = []
    for i in range(0, len(order), chunk):
        x, y = collate(examples, order[i:i + chunk], device)
        out.append(token_logprobs(model(x)[0], y).sum(1))
    if not out:
        return torch.zeros(0, device=device)
    return torch.cat(out)[torch.argsort(torch.tensor(order, device=device))]


@torch.no_grad()
def logprobs_of(model, examples, autocast, device):
    """sequence_logprobs without gradient, 64 examples at a time: a float tensor."""
    with autocast:
        return sequence_logprobs(model, examples, device, chunk=64).float()


def sampled_kl(model, ref, enc, prompts, answers, autocast, device):
    """log pi(answer) - log pi_ref(answer) of each answer sampled from pi (its <|end|> included):
    their mean is the sampled estimate of KL(pi || pi_ref), in nats per answer. A list of floats."""
    examples = answer_examples(enc, prompts, answers, raw_model(model).config.block_size)
    logp, ref_logp = (logprobs_of(m, examples, autocast, device) for m in (model, ref))
    return (logp - ref_logp).tolist()


def answer_prompts(model, enc, prompts, max_new_tokens, temperature, autocast, progress=None):
    """Token lists answering prompts, in their order: each rank answers a share, then gathered."""
    rank, world_size = rank_and_size()
    with autocast:
        tokens = sample_answers(model, enc, prompts[rank::world_size], max_new_tokens, temperature,
                                progress=progress if rank == 0 else None)
    gathered = sorted(all_gather(zip(range(rank, len(prompts), world_size), tokens)))
    return [t for _, t in gathered]


def answer_rewards(rm, enc, pairs, device):
    """An RM's score of each (prompt, answer): its scalar at the answer's <|end|> (appended; a
    too long answer is cut, keeping the <|end|>)."""
    end, block_size = enc.encode_single_token('<|end|>'), raw_model(rm).config.block_size
    seqs = [(prompt_tokens(enc, p) + enc.encode_ordinary(a))[:block_size - 1] + [end]
            for p, a in pairs]
    longest = max(len(s) for s in seqs)  # right padding: unseen by causal attention
    idx = torch.tensor([s + [0] * (longest - len(s)) for s in seqs], device=device)
    last = torch.tensor([len(s) - 1 for s in seqs], device=device)
    return rm(idx)[0].gather(1, last[:, None]).squeeze(1)


@torch.no_grad()
def score_pairs(rm, enc, pairs, autocast, device):
    """answer_rewards of any number of (prompt, answer) pairs, 64 at a time: a list of floats."""
    scores = []
    for i in range(0, len(pairs), 64):
        with autocast:
            scores += answer_rewards(rm, enc, pairs[i:i + 64], device).float().tolist()
    return scores


@torch.no_grad()
def ranking_scores(rm, enc, rows, autocast, device):
    """A reward model's scores of each ranking's answers: a list of float tensors, one per row."""
    scores = []
    for i in range(0, len(rows), 16):
        batch = rows[i:i + 16]
        pairs = [(row['prompt'], a) for row in batch for a in row['answers']]
        with autocast:
            r = answer_rewards(rm, enc, pairs, device).float().cpu()
        scores += r.split([len(row['answers']) for row in batch])
    return scores


def rm_accuracy(rows, scores):
    """A reward model on held-out rankings (with "gold" scores, the world's), from its
    ranking_scores of them: the share of pairs it orders as the labels do and, of pairs whose gold
    differs, as gold does (an RM tie counts half); its scores' correlation with gold, mean and std.
    {} when there are no rows."""
    if not rows:
        return {}
    agree_label, agree_gold, rewards, golds = [], [], [], []
    for row, rs in zip(rows, scores):
        g = torch.tensor(row.get('gold', [0.0] * len(rs)), dtype=torch.float64)  # (real: none)
        better, worse = torch.triu_indices(len(rs), len(rs), offset=1)  # better ranked first
        d, gold_d = rs[better] - rs[worse], g[better] - g[worse]
        agree_label += torch.where(d == 0, 0.5, (d > 0).double()).tolist()
        agree = torch.where(d == 0, 0.5, ((d > 0) == (gold_d > 0)).double())
        agree_gold += agree[gold_d != 0].tolist()
        rewards, golds = rewards + rs.tolist(), golds + g.tolist()
    mr, mg = sum(rewards) / len(rewards), sum(golds) / len(golds)
    cov = sum((r - mr) * (g - mg) for r, g in zip(rewards, golds))
    norm = math.sqrt(sum((r - mr) ** 2 for r in rewards) * sum((g - mg) ** 2 for g in golds)) or 1.0
    std = math.sqrt(sum((r - mr) ** 2 for r in rewards) / len(rewards))
    return dict(acc_label=sum(agree_label) / max(len(agree_label), 1),
                acc_gold=sum(agree_gold) / max(len(agree_gold), 1), corr_gold=cov / norm,
                rm_mean=mr, rm_std=std, gold_pairs=len(agree_gold), label_pairs=len(agree_label))


def fmt(x, digits=3):
    """A number for a report's table; None as '-'."""
    return '-' if x is None else f'{x:.{digits}f}'


def pm(pair, sign=''):
    """(mean, stderr) as '0.312 ± 0.097' (sign='+': '+0.312 ± 0.097'); None as '-'."""
    return '-' if pair is None else f'{pair[0]:{sign}.3f} ± {pair[1]:.3f}'


def table(header, rows):
    """A markdown table's lines."""
    return ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)] + \
           ['| ' + ' | '.join(map(str, row)) + ' |' for row in rows]


# ----------------------------------------------------------------------------- 8. the stages

# Each stage's checkpoint out/<stage>/ckpt.pt and the command that makes it (run.sh runs them all).
STAGES = dict(pretrain='python pretrain.py', sft='python sft.py', reward='python reward.py',
              bestofk='python bestofk.py', dpo='python dpo.py', rlhf='python rlhf.py',
              grpo='python rlhf.py --advantage=grpo --out_dir=out/grpo',
              rloo='python rlhf.py --advantage=rloo --out_dir=out/rloo',
              reward2='python reward.py --policy=out/rlhf --init_from=out/reward '
                      '--rankings=out/reward/rankings.jsonl --out_dir=out/reward2',
              rlhf2='python rlhf.py --init_from=out/rlhf --reward_model=out/reward2 '
                    '--out_dir=out/rlhf2')


def made_by(path):
    """The command that writes a checkpoint, from its folder's name (out/<stage>/ckpt.pt)."""
    stage = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return STAGES.get(stage, 'the training script that writes it')
