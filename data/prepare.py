"""
Makes the pretraining data: text -> tokenizer -> train.bin / val.bin (flat token arrays that
pretrain.py memory-maps) and meta.json; for the world also sft.jsonl, the demonstrations of sft.py.

  python data/prepare.py                                   # the tiny world (default, offline)
  python data/prepare.py --text_files=a.txt,b.txt --out_dir=out/data/mytext      # your own text,
  python data/prepare.py --text_files=a.txt --tokenizer=gpt2 --out_dir=out/data/mytext  # ... or gpt2's BPE

Documents are separated by <|endoftext|>. In a text file, a line holding only <|endoftext|>
ends a document (as in TinyStories); without such lines the whole file is one document.
"""
import json
import os
import re
import sys

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project root
import model                   # noqa: E402
from data import bpe, tasks, world    # noqa: E402

# -----------------------------------------------------------------------------
text_files = ''            # comma-separated UTF-8 files; empty: generate the tiny world
tokenizer = 'bpe'          # 'bpe': train the project's own on the text; 'gpt2': tiktoken's (a download)
vocab_size = 2048          # bpe only: 256 bytes + merges (the special tokens come on top)
bpe_train_chars = 20_000_000  # bpe only: train on this much of the text (merges depend little on more)
n_docs = 80_000            # world only: documents to generate
seed = 0                   # world only: the world (who lives where) and the corpus drawn from it
manners = 0.1              # world only: the share of documents on right and wrong and on what rarer words mean
n_demos = 4000             # world only: SFT demonstrations written to sft.jsonl (data/tasks.py)
flaw_rate = 0.4            # world only: the share of demonstrations with a flaw the gold judge sees
val_fraction = 0.05        # the last share of the tokens is the validation set
out_dir = 'out/data/world'
# -----------------------------------------------------------------------------


def read_documents(paths):
    """The documents of UTF-8 text files (data/corpus.py reads text with this too): a line holding
    only <|endoftext|> ends a document; a file without such lines is one. A BOM and CRLF line ends
    are allowed; a byte that is not UTF-8 stops the script with its file and line."""
    docs = []
    for path in paths:
        if not os.path.isfile(path):
            sys.exit(f'error: {path} not found')
        with open(path, 'rb') as f:
            raw = f.read().removeprefix(b'\xef\xbb\xbf')  # (the BOM holds no newline: line numbers stay right)
        try:
            text = raw.decode('utf-8').replace('\r\n', '\n')
        except UnicodeDecodeError as e:
            line = raw[:e.start].count(b'\n') + 1
            sys.exit(f'error: {path}:{line}: not UTF-8 text ({e.reason})')
        docs += [d.strip() for d in re.split(r'^[ \t]*<\|endoftext\|>[ \t]*$', text, flags=re.M) if d.strip()]
    return docs


def main():
    config = model.configure(globals())
    os.makedirs(out_dir, exist_ok=True)
    if text_files:
        docs = read_documents(text_files.split(','))
        if not docs:
            sys.exit(f'error: {text_files}: no text')
    elif not 0 <= manners <= 0.55:
        sys.exit(f'error: manners must be between 0 and 0.55 (the stories take 0.45), not {manners}')
    else:
        docs = world.corpus(world.make_world(seed), n_docs, seed, manners)
        sentences = [s for d in docs for s in re.split(r'(?<=[.!?]) ', d)]
        print(f'world: {len(docs):,} documents, {len(sentences):,} sentences, {len(set(sentences)):,} distinct')
        demos = tasks.demonstrations(world.make_world(seed), n_demos, flaw_rate, seed)
        with open(os.path.join(out_dir, 'sft.jsonl.tmp'), 'w') as f:  # the chat demonstrations for sft.py
            f.writelines(json.dumps(dict(messages=messages)) + '\n' for messages in demos)
        os.replace(os.path.join(out_dir, 'sft.jsonl.tmp'), os.path.join(out_dir, 'sft.jsonl'))
        print(f'{n_demos:,} demonstrations ({flaw_rate:.0%} with a flaw) in {out_dir}/sft.jsonl')

    if tokenizer == 'bpe':
        if not 256 <= vocab_size <= 2**16 - len(model.SPECIAL_TOKENS):
            sys.exit(f'error: vocab_size must be between 256 (the bytes) and {2**16 - len(model.SPECIAL_TOKENS)}')
        tok_path = os.path.join(out_dir, 'tokenizer.bpe')
        sample = '\n'.join(docs)[:bpe_train_chars]
        bpe.save_bpe(tok_path, bpe.train_bpe(sample, vocab_size, model.SPLIT_PATTERN))
    elif tokenizer == 'gpt2':
        tok_path = 'gpt2'
    else:
        sys.exit(f"error: tokenizer must be 'bpe' or 'gpt2', not {tokenizer!r}")
    enc = model.load_tokenizer(tok_path)
    eot = enc.encode_single_token('<|endoftext|>')
    dtype = np.uint16 if enc.n_vocab <= 2**16 else np.uint32  # uint16 holds ids below 65,536 only

    chunks = []
    for i in tqdm(range(0, len(docs), 1000), desc='tokenizing'):  # special-token text in a document stays text
        for ids in enc.encode_ordinary_batch(docs[i:i + 1000]):
            chunks.append(np.array([eot] + ids, dtype=dtype))
    tokens = np.concatenate(chunks)
    n_val = max(1, int(len(tokens) * val_fraction))
    for split, arr in (('train', tokens[:-n_val]), ('val', tokens[-n_val:])):
        path = os.path.join(out_dir, f'{split}.bin')
        arr.tofile(path + '.tmp')
        os.replace(path + '.tmp', path)
    meta = dict(tokenizer=tok_path, vocab_size=enc.n_vocab, dtype=np.dtype(dtype).name,
                train_tokens=len(tokens) - n_val, val_tokens=n_val, documents=len(docs), config=config)
    with open(os.path.join(out_dir, 'meta.json'), 'w') as f:
        json.dump(meta, f, indent=1)
    words = sum(len(d.split()) for d in docs)
    print(f'{out_dir}: {len(tokens) - n_val:,} train and {n_val:,} val tokens ({np.dtype(dtype).name}), '
          f'vocab {enc.n_vocab:,} ({tok_path}), {len(tokens) / words:.2f} tokens per word')


if __name__ == '__main__':
    main()
