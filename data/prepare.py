"""
Makes the pretraining data: text -> tokenizer -> train.bin / val.bin (flat token arrays that
pretrain.py memory-maps) and meta.json; for the world also sft.jsonl, the demonstrations of sft.py.

  python data/prepare.py                                         # the tiny world (default, offline)
  python data/prepare.py --text_files=a.txt,b.txt --out_dir=out/data/mine    # your own text, or
  python data/prepare.py --text_files=a.txt --tokenizer=gpt2 --out_dir=out/data/mine  # gpt2's BPE

Documents are separated by <|endoftext|>. In a text file, a line holding only <|endoftext|>
ends a document (as in TinyStories); without such lines the whole file is one document.

Text files are streamed, so a corpus of any size fits in memory: read line by line, a document at
a time; the BPE trains on the first bpe_train_chars characters; num_proc workers tokenize chunks of
about CHUNK_CHARS characters, at most two per worker in flight, and append their tokens to
train.bin.tmp in order; at the end the last val_fraction of the tokens moves to val.bin. In memory
stay one document (a whole file without <|endoftext|> lines), those chunks and the BPE sample.
"""
import collections
import json
import multiprocessing
import os
import re
import shutil
import sys

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project root
import model                   # noqa: E402
from data import bpe, formats, tasks, world    # noqa: E402

CHUNK_CHARS = 1_000_000    # about this many characters of documents per task sent to a worker
# -----------------------------------------------------------------------------
text_files = ''            # comma-separated UTF-8 files; empty: generate the tiny world
tokenizer = 'bpe'          # 'bpe': train our own on the text; 'gpt2': tiktoken's (a download)
vocab_size = 2048          # bpe only: 256 bytes + merges (the special tokens come on top)
bpe_train_chars = 20_000_000  # bpe only: train on this much text (merges depend little on more)
n_docs = 80_000            # world only: documents to generate
seed = 0                   # world only: the world (who lives where) and the corpus drawn from it
manners = 0.1              # world only: share of documents on right and wrong and on word meanings
n_demos = 4000             # world only: SFT demonstrations written to sft.jsonl (data/tasks.py)
flaw_rate = 0.4            # world only: the share of demonstrations with a flaw the gold judge sees
val_fraction = 0.05        # the last share of the tokens is the validation set
num_proc = os.cpu_count() or 1  # processes that tokenize
out_dir = 'out/data/world'
# -----------------------------------------------------------------------------


def decode(raw, path, line):
    try:
        return raw.decode('utf-8-sig' if line == 1 else 'utf-8').replace('\r\n', '\n')
    except UnicodeDecodeError as e:
        sys.exit(f'error: {path}:{line}: not UTF-8 text ({e.reason})')


def read_documents(paths):
    """Yields the documents of UTF-8 text files (data/corpus.py reads text with this too), reading
    line by line and holding only the current document: a line holding only <|endoftext|> ends it,
    a file without such lines is one, held whole. A BOM and CRLF line ends are allowed."""
    for path in paths:  # all of them before any work is done
        if not os.path.isfile(path):
            sys.exit(f'error: {path} not found')
    for path in paths:
        with open(path, 'rb') as f:
            lines = []
            for n, raw in enumerate(f, 1):
                line = decode(raw, path, n)
                if line.rstrip('\n').strip(' \t') == '<|endoftext|>':
                    if doc := ''.join(lines).strip():
                        yield doc
                    lines = []
                else:
                    lines.append(line)
            if doc := ''.join(lines).strip():  # (the file's last document, or its only one)
                yield doc


def bpe_sample(docs, n_chars):
    """The documents joined by newlines, up to n_chars characters, reading only those needed."""
    parts, size = [], 0
    for doc in docs:
        parts.append(doc)
        size += len(doc) + 1
        if size > n_chars:  # (at n_chars, a final newline would depend on a next document)
            break
    return '\n'.join(parts)[:n_chars]


def chunks_of(docs, n_chars):
    """The documents in lists of about n_chars characters: the tasks of the tokenizing workers."""
    chunk, size = [], 0
    for doc in docs:
        chunk.append(doc)
        size += len(doc)
        if size >= n_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def token_dtype(enc):
    return np.uint16 if enc.n_vocab <= 2**16 else np.uint32  # uint16 holds ids below 65,536 only


def start_worker(tok_path):
    """Loads the tokenizer once in each worker process, not once per chunk sent to it."""
    global worker_enc
    worker_enc = model.load_tokenizer(tok_path)


def encode_chunk(docs):
    """(tokens, documents, words) of a list of documents: their token ids in one array, each
    document's after an <|endoftext|> (special-token text in a document stays text)."""
    eot = worker_enc.encode_single_token('<|endoftext|>')
    ids = [token for doc in docs for token in (eot, *worker_enc.encode_ordinary(doc))]
    words = sum(len(doc.split()) for doc in docs)
    return np.array(ids, dtype=token_dtype(worker_enc)), len(docs), words


def encoded_chunks(chunks, tok_path, num_proc):
    """encode_chunk of each chunk, in order, run by num_proc worker processes with at most two
    chunks per worker in flight, so memory stays bounded whatever the corpus. (Not Pool.imap: it
    reads the chunks in a thread of its own, where a bad file's sys.exit would be lost.)"""
    with multiprocessing.Pool(num_proc, start_worker, (tok_path,)) as pool:
        in_flight = collections.deque()
        for chunk in chunks:
            in_flight.append(pool.apply_async(encode_chunk, (chunk,)))
            if len(in_flight) == 2 * num_proc:
                yield in_flight.popleft().get()
        while in_flight:
            yield in_flight.popleft().get()


def write_tokens(docs, tok_path, path, num_proc):
    """Appends the documents' tokens to path as workers send them; returns docs, tokens, words."""
    n_docs = n_tokens = n_words = 0
    chunks = chunks_of(docs, CHUNK_CHARS)
    with open(path, 'wb') as f, tqdm(desc='tokenizing', unit=' docs', unit_scale=True) as bar:
        for tokens, chunk_docs, words in encoded_chunks(chunks, tok_path, num_proc):
            tokens.tofile(f)
            n_docs, n_tokens, n_words = n_docs + chunk_docs, n_tokens + len(tokens), n_words + words
            bar.update(chunk_docs)
    return n_docs, n_tokens, n_words


def move_tail(src_path, dst_path, n_bytes):
    """Moves the last n_bytes of one file into a new file, in blocks (the tail may be gigabytes)."""
    keep = os.path.getsize(src_path) - n_bytes
    with open(src_path, 'rb') as src, open(dst_path, 'wb') as dst:
        src.seek(keep)
        shutil.copyfileobj(src, dst, 1 << 24)
    os.truncate(src_path, keep)


def main():
    config = model.configure(globals())
    os.makedirs(out_dir, exist_ok=True)
    if text_files:
        paths = text_files.split(',')
    elif not 0 <= manners <= 0.55:
        sys.exit(f'error: manners must be between 0 and 0.55 (the stories take 0.45), '
                 f'not {manners}')
    else:
        docs = world.corpus(world.make_world(seed), n_docs, seed, manners)  # (small: a list)
        sentences = [s for d in docs for s in re.split(r'(?<=[.!?]) ', d)]
        print(f'world: {len(docs):,} documents, {len(sentences):,} sentences, '
              f'{len(set(sentences)):,} distinct')
        demos = tasks.demonstrations(world.make_world(seed), n_demos, flaw_rate, seed)
        formats.write_jsonl(os.path.join(out_dir, 'sft.jsonl'), [dict(messages=m) for m in demos])
        print(f'{n_demos:,} demonstrations ({flaw_rate:.0%} with a flaw) in {out_dir}/sft.jsonl')
    max_vocab = 2**16 - len(model.SPECIAL_TOKENS)  # (so that token ids fit in uint16)
    if tokenizer == 'bpe' and not 256 <= vocab_size <= max_vocab:
        sys.exit(f'error: vocab_size must be between 256 (the bytes) and {max_vocab}')
    if tokenizer not in ('bpe', 'gpt2'):
        sys.exit(f"error: tokenizer must be 'bpe' or 'gpt2', not {tokenizer!r}")
    if num_proc < 1:
        sys.exit(f'error: num_proc must be at least 1, not {num_proc}')

    # All goes to .tmp files that replace the old ones at the end: a bad byte leaves those intact.
    tok_path = os.path.join(out_dir, 'tokenizer.bpe') if tokenizer == 'bpe' else 'gpt2'
    tok_file = tok_path + '.tmp' if tokenizer == 'bpe' else tok_path  # (loaded from here)
    train_path, val_path, meta_path = (os.path.join(out_dir, name)
                                       for name in ('train.bin', 'val.bin', 'meta.json'))
    outputs = [train_path, val_path, meta_path] + ([tok_path] if tokenizer == 'bpe' else [])
    try:
        if tokenizer == 'bpe':  # (a fresh read_documents reads the files again below)
            sample = bpe_sample(read_documents(paths) if text_files else docs, bpe_train_chars)
            bpe.save_bpe(tok_file, bpe.train_bpe(sample, vocab_size, model.SPLIT_PATTERN))
            del sample  # (its memory is not needed while tokenizing)
        enc = model.load_tokenizer(tok_file)
        dtype = np.dtype(token_dtype(enc))
        documents, n_tokens, words = write_tokens(read_documents(paths) if text_files else docs,
                                                  tok_file, train_path + '.tmp', num_proc)
        if not documents:
            sys.exit(f'error: {text_files}: no text')
        n_val = max(1, int(n_tokens * val_fraction))
        move_tail(train_path + '.tmp', val_path + '.tmp', n_val * dtype.itemsize)
        meta = dict(tokenizer=tok_path, vocab_size=enc.n_vocab, dtype=dtype.name,
                    train_tokens=n_tokens - n_val, val_tokens=n_val, documents=documents,
                    config=config)
        with open(meta_path + '.tmp', 'w') as f:
            json.dump(meta, f, indent=1)
    except BaseException:
        for path in outputs:
            if os.path.exists(path + '.tmp'):
                os.remove(path + '.tmp')
        raise
    for path in outputs:
        os.replace(path + '.tmp', path)
    print(f'{out_dir}: {n_tokens - n_val:,} train and {n_val:,} val tokens ({dtype.name}), '
          f'vocab {enc.n_vocab:,} ({tok_path}), {n_tokens / words:.2f} tokens per word')


# ----------------------------------------------------------------------------- reading them back


def load_tokens(data_dir, split, block_size):
    """A token file of data/prepare.py as a read-only memory map, checked for being there, whole
    and long enough; and its meta.json."""
    meta_path, path = os.path.join(data_dir, 'meta.json'), os.path.join(data_dir, f'{split}.bin')
    if not os.path.exists(meta_path) or not os.path.exists(path):
        sys.exit(f'error: {path} not found: run python data/prepare.py first')
    with open(meta_path) as f:
        meta = json.load(f)
    itemsize, size = np.dtype(meta['dtype']).itemsize, os.path.getsize(path)
    if size % itemsize:
        sys.exit(f'error: {path} is truncated ({size} bytes, not a multiple of {itemsize}): '
                 'run python data/prepare.py again')
    if size // itemsize < block_size + 2:
        sys.exit(f'error: {path} holds {size // itemsize} tokens, fewer than block_size + 2 = '
                 f'{block_size + 2}')
    return np.memmap(path, dtype=meta['dtype'], mode='r'), meta


def get_batch(tokens, batch_size, block_size, batch_seed, device):
    """Random windows of the token stream; the inputs x and the targets y, shifted by one. Drawn
    from a generator seeded per batch, so a resumed run sees the batches it would have seen."""
    generator = torch.Generator().manual_seed(batch_seed)
    starts = torch.randint(len(tokens) - block_size - 1, (batch_size,), generator=generator)
    windows = np.stack([tokens[s:s + block_size + 1] for s in starts.tolist()])
    xy = torch.from_numpy(windows.astype(np.int64))
    pinned = device.startswith('cuda')  # (so that the copy to the GPU need not wait)
    xy = (xy.pin_memory() if pinned else xy).to(device, non_blocking=pinned)
    return xy[:, :-1], xy[:, 1:]


if __name__ == '__main__':
    main()
