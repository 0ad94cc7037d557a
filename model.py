"""
The one module every stage shares:
  1. the GPT (LLaMA-style block, KV-cache generation, optional scalar head)
  2. the tokenizer (the project's own BPE, or tiktoken's gpt2), with chat special tokens
  3. device, precision and distributed (torchrun) setup
  4. the --key=value configurator
  5. JSONL data files, checkpoints, optimizer, learning-rate schedule, MFU
"""
import ast
import base64
import json
import math
import os
import sys
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import tiktoken
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

# ----------------------------------------------------------------------------- 1. the model

@dataclass
class GPTConfig:
    vocab_size: int = 2048
    block_size: int = 256   # longest sequence (prompt + answer) the model sees
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    scalar_head: bool = False  # a Linear(n_embd, 1) on the final hidden states: reward / value models


def rotate(x, rot):
    """Rotary position embedding (Su et al. 2021, eq. 34): each pair (x[2i], x[2i+1]) is read as a
    complex number and turned by the angle of its position, a multiplication by rot = e^(i angle).
    In fp32 (under bf16 autocast too); returned in x's dtype. (Complex numbers: on CPUs one
    vectorized kernel each way, faster than the same turn with real cos and sin.)"""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # a view, no copy, when x[..., 0] has stride 1
    return torch.view_as_real(pairs * rot).flatten(-2).type_as(x)


class RMSNormFunction(torch.autograd.Function):
    """RMSNorm (Zhang & Sennrich 2019, eq. 4): y = x / sqrt(mean(x^2) + eps) * w, the math of
    nn.RMSNorm, in fewer passes over memory on a CPU, where torch runs it as six separate ops.
    The gradient by hand: with r = 1 / sqrt(mean(x^2) + eps), x^ = x r and g = dy w,
    dx = r (g - x^ mean(g x^)) and dw = the sum over positions of dy x^ (mean(g x^) is then
    (dy x^) . w / n_embd, one pass fewer)."""
    @staticmethod
    def forward(ctx, x, weight, eps):
        r = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.size(-1)).add_(eps).rsqrt_()
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
    """One token per row of probs (B, vocab), drawn by inverse CDF: the first token whose cumulative
    probability exceeds u, uniform in [0, total). The same distribution as torch.multinomial,
    many times faster on a CPU."""
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1:]
    u = torch.rand_like(total) * total
    u = torch.minimum(u, total.nextafter(torch.zeros_like(total)))  # u < total even after rounding
    return torch.searchsorted(cdf, u, right=True)  # never a token of probability 0


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x, rot, mask, kv, start):
        B, T, C = x.shape
        qk, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).split([2, 1], dim=2)
        q, k = rotate(qk, rot).unbind(2)                              # queries and keys turned at once
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.squeeze(2).transpose(1, 2)  # each (B, heads, T, head_dim)
        if kv is not None:  # generate's cache: write this call's keys/values in place, attend to all so far
            kv[0, :, :, start:start + T], kv[1, :, :, start:start + T] = k, v
            k, v = kv[0, :, :, :start + T], kv[1, :, :, :start + T]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    """SwiGLU (Shazeer 2020): down(silu(gate(x)) * up(x)); hidden 8/3 n_embd keeps the 8 n_embd^2
    parameters of GPT-2's 4x GELU MLP. (Two matmuls, not one split in two: the halves of a split
    are strided, and the elementwise ops on them run slower on CPUs.)"""
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
        angles = torch.outer(torch.arange(cfg.block_size).float(), inv_freq)  # (block_size, head_dim/2)
        self.register_buffer('rot', torch.polar(torch.ones_like(angles), angles), persistent=False)
        for name, p in self.named_parameters():  # GPT-2 init; residual projections scaled by 1/sqrt(2 L)
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * cfg.n_layer) if name.endswith(('proj.weight', 'down.weight')) else 0.02
                nn.init.normal_(p, mean=0.0, std=std)
            elif name.endswith('bias'):
                nn.init.zeros_(p)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def hidden(self, idx, n_pad=None, cache=None):
        """Final normed hidden states (B, T, n_embd) at every position.
        n_pad (B,): rows are left-padded with that many tokens, which no position attends to and
        which do not count as positions (the first real token is position 0).
        cache: generate's KV cache (new_cache); the call adds idx's keys and values to it."""
        B, T = idx.shape
        start = cache['len'] if cache else 0  # tokens already in the cache
        if start + T > self.config.block_size:
            raise ValueError(f'sequence of {start + T} tokens is longer than block_size={self.config.block_size}')
        if n_pad is None and start == 0:  # plain causal attention (the training path, flash on GPU)
            mask, pos = None, torch.arange(T, device=idx.device)
        else:
            n_pad = torch.zeros(B, dtype=torch.long, device=idx.device) if n_pad is None else n_pad
            query = torch.arange(start, start + T, device=idx.device)
            pos = (query[None, :] - n_pad[:, None]).clamp(min=0)  # (B, T)
            if T == 1 and cache:  # a decode step: the new token sees every key that is not padding
                mask = cache['real'][:, None, None, :start + 1]
            else:  # a query sees earlier keys that are not padding; a padding query sees itself (no NaN rows)
                key = torch.arange(start + T, device=idx.device)
                mask = (key[None, None, :] <= query[None, :, None]) & (key[None, None, :] >= n_pad[:, None, None])
                mask = (mask | (key[None, None, :] == query[None, :, None]))[:, None]  # (B, 1, T, start+T)
        rot = self.rot[pos][..., None, None, :]  # broadcast to (B, T, 2, heads, head_dim / 2)
        x = self.wte(idx)
        for i, block in enumerate(self.blocks):
            x = block(x, rot, mask, cache['kv'][i] if cache else None, start)
        if cache:
            cache['len'] += T
        return self.norm(x)

    def new_cache(self, n_pad, length, dtype):
        """The KV cache of one generate call, allocated once: kv (layers, 2, B, heads, length,
        head_dim) holds the keys and values of the first len tokens of each row; real (B, length)
        marks the keys that are not left padding."""
        cfg, B = self.config, len(n_pad)
        kv = torch.empty(cfg.n_layer, 2, B, cfg.n_head, length, cfg.n_embd // cfg.n_head, dtype=dtype, device=n_pad.device)
        real = torch.arange(length, device=n_pad.device)[None, :] >= n_pad[:, None]
        return dict(kv=kv, real=real, len=0)

    def forward(self, idx, targets=None, n_pad=None):
        """Logits (B, T, vocab) at every position; with targets also the mean cross-entropy over the
        targets that are not -1 (a batch whose targets are all -1 gives 0, not NaN).
        A model with a scalar head (a reward or value model) returns its scalar at every position
        (B, T) instead of logits."""
        h = self.hidden(idx, n_pad)
        if self.scalar_head is not None:
            return self.scalar_head(h).squeeze(-1).float(), None
        logits = self.lm_head(h)
        if targets is None:
            return logits, None
        losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1, reduction='none')
        return logits, losses.sum() / (targets != -1).sum().clamp(min=1)

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens, temperature=1.0, top_k=None, stop_token=None, on_token=None):
        """Sample continuations of a batch of prompts (lists of token ids, any lengths) with a KV
        cache. temperature=0 is greedy. Returns (tokens (B, max_new_tokens), lengths (B,)): row b's
        answer is tokens[b, :lengths[b]], its stop token included; the rest is filler.
        on_token(rows, tokens): called after each step with the new tokens (n,) of the rows (n,)
        still writing (to stream them as they come)."""
        device = self.wte.weight.device
        B, longest = len(prompts), max(len(p) for p in prompts)
        if longest + max_new_tokens - 1 > self.config.block_size:
            raise ValueError(f'sequence of {longest + max_new_tokens - 1} tokens is longer than '
                             f'block_size={self.config.block_size}')
        first = {}  # a prompt asked k times (k answers each) is read once (where that saves half or more)
        source = torch.tensor([first.setdefault(tuple(p), len(first)) for p in prompts], device=device)
        distinct = list(first) if 2 * len(first) <= B else prompts
        n_pad = torch.tensor([longest - len(p) for p in distinct], device=device)
        idx = torch.tensor([[0] * (longest - len(p)) + list(p) for p in distinct], device=device)
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else self.wte.weight.dtype
        cache = self.new_cache(n_pad, longest + max_new_tokens - 1, dtype)
        out = torch.zeros(B, max_new_tokens, dtype=torch.long, device=device)
        lengths = torch.full((B,), max_new_tokens, device=device)
        rows = torch.arange(B, device=device)  # the rows still writing; finished ones leave the batch
        for t in range(max_new_tokens):
            logits = self.lm_head(self.hidden(idx, n_pad, cache)[:, -1]).float()  # (the last position only)
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
            if stop_token is not None:
                so_far = lengths[rows]  # (a row's first stop only; where(), not a mask: no GPU sync per token)
                lengths[rows] = torch.where((idx[:, 0] == stop_token) & (so_far == max_new_tokens), t + 1, so_far)
                # finished rows leave at once on a CPU or when streaming; on a GPU every 8 steps (a check waits for it)
                if device.type == 'cpu' or on_token is not None or t % 8 == 7:
                    going = lengths[rows] == max_new_tokens
                    if not going.all():  # the finished rows leave
                        order = drop_rows(cache, going)
                        rows, idx, n_pad = rows[order], idx[order], n_pad[order]
                        if len(rows) == 0:
                            break
        return out, lengths


def copy_rows(cache, rows):
    """A new cache holding the given rows (indices into the old rows) of the old one."""
    kv, filled = cache['kv'], cache['len']
    new = kv.new_empty(kv.shape[:2] + (len(rows),) + kv.shape[3:])
    new[:, :, :, :, :filled] = kv[:, :, rows, :, :filled]  # (the filled part only)
    return dict(kv=new, real=cache['real'][rows], len=filled)


def drop_rows(cache, going):
    """Keeps the rows of the cache where going (a mask) is True, in place and without copying the
    rest: the going rows past the first n = going.sum() slots move into the slots of finished rows
    among the first n. Returns the order of the rows kept (n indices into the old rows)."""
    n = int(going.sum())
    order, holes = torch.arange(n, device=going.device), (~going[:n]).nonzero().squeeze(1)
    order[holes] = n + going[n:].nonzero().squeeze(1)  # (as many going rows past n as holes before it)
    kv, filled = cache['kv'], cache['len']
    kv[:, :, holes, :, :filled] = kv[:, :, order[holes], :, :filled]
    cache['kv'], cache['real'] = kv[:, :, :n], cache['real'][order]
    return order


@torch.no_grad()
def sample_answers(model, enc, prompts, max_new_tokens, temperature=1.0, batch_size=256, progress=None):
    """Answers to prompts (strings or message lists), batch by batch with the KV cache: a list of
    token lists, each ending with <|end|> unless it ran out of max_new_tokens. Prompts of similar
    length share a batch (less padding). progress: a tqdm description, or None for no bar."""
    model = raw_model(model)
    end, answers = enc.encode_single_token('<|end|>'), [None] * len(prompts)
    tokens = [prompt_tokens(enc, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(tokens[i]))
    for i in tqdm(range(0, len(prompts), batch_size), desc=progress, disable=progress is None, leave=False):
        rows = order[i:i + batch_size]
        room = min(max_new_tokens, model.config.block_size - max(len(tokens[j]) for j in rows))
        out, lengths = model.generate([tokens[j] for j in rows], room, temperature=temperature, stop_token=end)
        for j, row, n in zip(rows, out.tolist(), lengths.tolist()):
            answers[j] = row[:n]
    return answers

# ----------------------------------------------------------------------------- 2. the tokenizer

# GPT-2's pre-tokenizer pattern (Radford et al. 2019): BPE merges never cross these pieces.
SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# <|endoftext|> separates documents; the chat template of sft.py uses the other three.
SPECIAL_TOKENS = ['<|endoftext|>', '<|user|>', '<|assistant|>', '<|end|>']


def load_tokenizer(name):
    """'gpt2' (tiktoken's, downloaded once) or the path of a ranks file (data/bpe.py's save_bpe).
    The special tokens get the ids right after the ranks."""
    if name == 'gpt2':
        base = tiktoken.get_encoding('gpt2')
        ranks, pattern = base._mergeable_ranks, base._pat_str
    else:
        if not os.path.exists(name):
            sys.exit(f'error: tokenizer {name} not found: run python data/prepare.py')
        with open(name) as f:
            ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in f if line.strip())}
        pattern = SPLIT_PATTERN
    specials = {tok: len(ranks) + i for i, tok in enumerate(SPECIAL_TOKENS)}
    return tiktoken.Encoding(name=os.path.basename(name), pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)


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


def prompt_tokens(enc, prompt):
    """The tokens that ask the model for the assistant's next turn."""
    messages = [dict(role='user', content=prompt)] if isinstance(prompt, str) else prompt
    return render_chat(enc, messages)[0] + [enc.encode_single_token('<|assistant|>')]


def answer_text(enc, tokens):
    """An answer's text: the tokens before the first <|end|>, without special or padding ids."""
    end = enc.encode_single_token('<|end|>')
    tokens = tokens[:tokens.index(end)] if end in tokens else tokens
    return enc.decode([t for t in tokens if t < enc.n_vocab - len(SPECIAL_TOKENS)])

# ----------------------------------------------------------------------------- 3. device and ranks

def setup(device='auto', dtype='auto', seed=1337):
    """Reads torchrun's RANK / LOCAL_RANK / WORLD_SIZE (absent: one process). Returns
    (rank, world_size, device, autocast context). nccl on CUDA, gloo on CPU."""
    rank, local_rank, world_size = (int(os.environ.get(k, d)) for k, d in
                                    (('RANK', 0), ('LOCAL_RANK', 0), ('WORLD_SIZE', 1)))
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
    if device not in ('cpu', 'cuda', 'mps') or (device == 'cuda' and not torch.cuda.is_available()):
        sys.exit(f"error: device {device!r} is not available here (choose 'auto', 'cpu', 'cuda' or 'mps')")
    if dtype not in ('auto', 'float32', 'bfloat16'):
        sys.exit(f"error: dtype must be 'auto', 'float32' or 'bfloat16', not {dtype!r}")
    if device == 'cuda':
        device = f'cuda:{local_rank}'
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if 'RANK' in os.environ:  # started by torchrun (even with one process: the DDP path is the same)
        dist.init_process_group('nccl' if device.startswith('cuda') else 'gloo')
    torch.manual_seed(seed + rank)
    if dtype == 'auto':  # bf16 matmuls where the chip has them: GPUs since Ampere, CPUs with AVX512-BF16 or AMX
        native = torch.cuda.is_bf16_supported() if device.startswith('cuda') else device == 'cpu' and '_bf16' in cpuinfo() \
            and os.environ.get('ATEN_CPU_CAPABILITY', 'avx512') not in ('avx2', 'default')  # (kernels held to AVX2: none)
        dtype = 'bfloat16' if native else 'float32'
    autocast = (torch.autocast(device.split(':')[0], dtype=torch.bfloat16) if dtype == 'bfloat16' else nullcontext())
    return rank, world_size, device, autocast


def cpuinfo():
    """/proc/cpuinfo: clock and feature flags (avx512_bf16, amx_bf16, ...). Empty where there is none."""
    try:
        with open('/proc/cpuinfo') as f:
            return f.read()
    except OSError:
        return ''


def all_gather(items):
    """Every rank's list, concatenated in rank order (the list itself with one process)."""
    if not dist.is_initialized():
        return list(items)
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(items))
    return [x for part in parts for x in part]


def teardown():
    if dist.is_initialized():
        dist.barrier()  # every rank done with its collectives before the group goes
        dist.destroy_process_group()


def all_mean(x):
    """Mean of a float over all ranks (the float itself with one process)."""
    if not dist.is_initialized():
        return float(x)
    t = torch.tensor(float(x), device='cuda' if dist.get_backend() == 'nccl' else 'cpu')
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()

# ----------------------------------------------------------------------------- 4. the configurator

def configure(defaults, argv=None):
    """A script's lowercase module-level int/float/bool/str constants are its config. Arguments:
    'path.py' files of `key = value` lines, then --key=value, each cast to the default's type.
    Updates `defaults` (the script's globals()) and returns the config as a dict."""
    keys = {k: v for k, v in defaults.items() if not k.startswith('_') and k.islower()
            and type(v) in (int, float, bool, str)}

    def apply(key, value, where):
        if key not in keys:
            sys.exit(f'error: {where}: unknown config key {key!r}; valid keys: {", ".join(sorted(keys))}')
        kind = type(keys[key])
        try:
            if isinstance(value, str) and kind is bool:
                if value.lower() not in ('true', 'false', '1', '0'):
                    raise ValueError(value)
                value = value.lower() in ('true', '1')
            elif isinstance(value, str) or (kind is float and type(value) is int):
                value = kind(value)
            if type(value) is not kind:
                raise ValueError(value)
        except ValueError:
            sys.exit(f'error: {where}: {key} must be {kind.__name__}, got {value!r}')
        defaults[key] = keys[key] = value

    for arg in sys.argv[1:] if argv is None else argv:
        if arg.startswith('--'):
            key, eq, value = arg[2:].partition('=')
            if not eq:
                sys.exit(f'error: {arg}: write --{key}=VALUE')
            apply(key, value, arg)
        else:
            if not os.path.isfile(arg):
                sys.exit(f'error: config file {arg} not found')
            with open(arg) as f:
                tree = ast.parse(f.read(), filename=arg)
            for node in tree.body:
                if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
                    sys.exit(f'error: {arg}:{node.lineno}: only `key = value` lines are allowed')
                try:
                    value = ast.literal_eval(node.value)
                except ValueError:
                    sys.exit(f'error: {arg}:{node.lineno}: the value must be a literal')
                apply(node.targets[0].id, value, f'{arg}:{node.lineno}')
    return dict(keys)

# ----------------------------------------------------------------------------- 5. data files, checkpoints and training

def read_jsonl(paths, check, expected):
    """The rows of comma-separated JSONL files. check(row) returns '' or what is wrong with the row;
    a wrong row, or a line that is not UTF-8 JSON of the expected form, stops the script with one
    error naming the file and line."""
    rows = []
    for path in filter(None, paths.split(',')):
        if not os.path.isfile(path):
            sys.exit(f'error: {path} not found')
        with open(path, 'rb') as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line.decode('utf-8'))
                    problem = check(row)
                except UnicodeDecodeError:
                    problem = 'not UTF-8 text'
                except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                    problem = f'expected a JSON object {expected}'
                if problem:
                    sys.exit(f'error: {path}:{number}: {problem}')
                rows.append(row)
    return rows


def write_jsonl(path, rows):
    """Writes rows as JSONL, to path.tmp first: a kill leaves the old file or the new, never half of one."""
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + '\n' for row in rows)
    os.replace(path + '.tmp', path)


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
    """{path: [size, modification time]} of the checkpoints a run reads: a resumed run must read the same."""
    return {path: [os.path.getsize(path), os.stat(path).st_mtime_ns] for path in paths}


def save_progress(path, model, inputs, **state):
    """A checkpoint that a killed run goes on from (resumable() finds it): state (weights, optimizer, step,
    ...) with finished=False, the input stamps and every rank's random state (the CPU's and, on CUDA, the
    GPU's), so the run goes on drawing what it would have drawn. Every rank calls it; rank 0 writes."""
    rng = all_gather([dict(cpu=torch.get_rng_state(), cuda=torch.cuda.get_rng_state() if torch.cuda.is_available() else None)])
    if not dist.is_initialized() or dist.get_rank() == 0:
        save_checkpoint(path, model, finished=False, inputs=input_stamps(inputs), rng=rng, **state)


def resumable(out_dir, config, inputs, device='cpu'):
    """The checkpoint that a killed run of this stage left in out_dir/ckpt.pt (save_progress), to go on
    from, with this rank's random state restored from it; or None (start over): there is none, it is from
    a finished run, or from a run with another config or other input checkpoints (inputs: their paths)."""
    path = os.path.join(out_dir, 'ckpt.pt')
    if not os.path.exists(path):
        return None
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        sys.exit(f'error: {path} is not a readable checkpoint ({type(e).__name__}: {str(e)[:200]}); delete it to start over')
    if ckpt.get('finished', True):
        return None
    changed = [k for k in config if ckpt['config'].get(k) != config[k]]
    if changed or ckpt['inputs'] != input_stamps(inputs):
        why = ', '.join(f'{k} was {ckpt["config"].get(k)!r}' for k in changed) or 'its input checkpoints changed since'
        print(f'{path}: an unfinished run of another command ({why}): starting over')
        return None
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if len(ckpt['rng']) == world_size:  # (with another number of ranks: left as seeded)
        torch.set_rng_state(ckpt['rng'][rank]['cpu'].cpu())  # (map_location may have put it on a GPU)
        if ckpt['rng'][rank]['cuda'] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(ckpt['rng'][rank]['cuda'].cpu())
    return ckpt


def keep_metrics(path, start):
    """Keeps the rows of the metrics log that a run resumed at iteration `start` will not write again
    (all of them are dropped when start is 0). A line cut short by a kill has no newline: dropped."""
    rows = []
    if start and os.path.exists(path):
        with open(path) as f:
            rows = [line for line in f if line.endswith('\n') and json.loads(line)['iter'] < start]
    with open(path, 'w') as f:
        f.writelines(rows)


def load_checkpoint(path, made_by, device='cpu', scalar_head=None):
    """Loads out/<stage>/ckpt.pt (data only: weights_only=True). Returns (model, ckpt).
    made_by: the command that writes this checkpoint, named in the error when it is missing.
    scalar_head True/False: with/without a scalar head, whatever the checkpoint had (a new head
    starts at zero output; a head not wanted is left out): a reward or value model from a policy."""
    if not os.path.exists(path):
        sys.exit(f'error: {path} not found: run {made_by} first')
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
        if ckpt.get('finished') is False:  # (pretrain.py's checkpoints, usable at every step, carry no such flag)
            sys.exit(f'error: {path} is from a run that has not finished (killed?): run {made_by} again, it continues')
        args = dict(ckpt['model_args'], **({} if scalar_head is None else dict(scalar_head=scalar_head)))
        model = GPT(GPTConfig(**args))
        state = {k.removeprefix('_orig_mod.'): v for k, v in ckpt['model'].items()}
        if not args['scalar_head']:
            state = {k: v for k, v in state.items() if not k.startswith('scalar_head.')}
        elif 'scalar_head.weight' not in state:
            nn.init.zeros_(model.scalar_head.weight)
            state.update({k: v for k, v in model.state_dict().items() if k.startswith('scalar_head.')})
        model.load_state_dict(state)
    except Exception as e:
        sys.exit(f'error: {path} is not a readable checkpoint ({type(e).__name__}: {str(e)[:200]}); '
                 f'delete it and run {made_by} again')
    return model.to(device), ckpt


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


def flops_per_token(model):
    """Training FLOPs per token: 6 N for the matmuls plus 12 L d T for attention (PaLM, app. B)."""
    cfg = raw_model(model).config
    return 6 * raw_model(model).num_params() + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size


def peak_flops(device, bf16):
    """Dense peak FLOP/s of the device, for MFU. GPUs: bf16 tensor-core peaks from the data sheets;
    CPUs: cores x clock x fp32 FLOPs per cycle (AVX-512: 64, AVX2+FMA: 32), twice that for bf16
    (AVX512-BF16 multiplies pairs of bf16 in each fp32 lane); a rough figure."""
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
