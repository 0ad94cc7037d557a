"""
Downloads a real pretraining corpus as UTF-8 text for data/prepare.py: <out_dir>/<name>.txt,
documents separated by lines holding only <|endoftext|>. Then run the command it prints last.

  python data/corpus.py                        # tiny Shakespeare (1 MB, cut in 10k characters)
  python data/corpus.py --name=tinystories     # TinyStories' validation split (19 MB, ~22k stories)
  python data/corpus.py --name=c4              # C4 English web text, for GPUs: 1 of 1024 shards
  python data/corpus.py --name=c4 --shards=32  # first 32 (each 0.3 GB, ~356k docs, ~150M tokens)
  python data/corpus.py --name=c4 --file=a.json.gz,b.json.gz   # local files instead

Files named .json/.jsonl(.gz) hold JSON lines with a "text" string (C4's format), others text in
the format above. A malformed file is an error naming file:line, and nothing is written.
A document longer than max_doc_chars (plain text without <|endoftext|> lines is one document: a
book, a dump) is cut into documents of at most that many characters, each cut at the last blank
line in the second half of that length, else the last line end, else sentence end, else space.
"""
import gzip
import itertools
import json
import os
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project root
import model                   # noqa: E402
from data.alpaca import download  # noqa: E402  (kept in out_dir, not fetched again)
from data.prepare import decode, read_documents  # noqa: E402

SOURCES = {
    'shakespeare':
        'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt',
    'tinystories':
        'https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStories-valid.txt',
    'c4': 'https://huggingface.co/datasets/allenai/c4/resolve/main/en/'
          'c4-train.{:05d}-of-01024.json.gz'}
# -----------------------------------------------------------------------------
name = 'shakespeare'       # 'shakespeare', 'tinystories', 'c4'; with --file any (the output's name)
file = ''                  # comma-separated files (JSON lines or text, see above); empty: download
shards = 1                 # c4 only: how many of its 1024 training shards to download
max_docs = 0               # keep only the first this many documents; 0: all
max_doc_chars = 10000      # longer documents are cut into documents of at most this; 0: never
out_dir = 'out/data/raw'   # <name>.txt, and the downloads, kept, in download/
# -----------------------------------------------------------------------------


def jsonl_documents(path):
    """The "text" of each line of a JSON-lines file, gzipped if its name ends in .gz."""
    n = 0
    try:
        with (gzip.open if path.endswith('.gz') else open)(path, 'rb') as f:
            for n, raw in enumerate(f, 1):
                if raw.strip():
                    try:
                        record = json.loads(decode(raw, path, n))
                    except json.JSONDecodeError as e:
                        sys.exit(f'error: {path}:{n}: bad JSON ({e.msg}, column {e.colno})')
                    if not isinstance(record, dict) or not isinstance(record.get('text'), str):
                        sys.exit(f'error: {path}:{n}: not an object with a "text" string')
                    yield record['text']
    except (OSError, EOFError, zlib.error) as e:  # (gzip.BadGzipFile is an OSError)
        sys.exit(f'error: {path}:{n + 1}: not a whole gzip file ({e})')


def pieces(doc, max_chars):
    """The document cut into pieces of at most max_chars characters (0: never cut): each cut at the
    last blank line in the second half of max_chars, else line end, else sentence end, else space
    (else at max_chars)."""
    out = []
    while max_chars and len(doc) > max_chars:
        head = doc[:max_chars]
        ends = (head.rfind(sep) + len(sep) for sep in ('\n\n', '\n', '. ', ' '))
        cut = next((end for end in ends if end > max_chars // 2), max_chars)
        out.append(doc[:cut].strip())
        doc = doc[cut:].strip()
    return out + [doc]


def main():
    model.configure(globals())
    if file:
        paths = file.split(',')
    elif name not in SOURCES:
        sys.exit(f'error: name must be one of {", ".join(SOURCES)} (or pass --file), not {name!r}')
    elif not 1 <= shards <= 1024:
        sys.exit(f'error: shards must be between 1 and 1024, not {shards}')
    else:
        urls = [SOURCES[name].format(i) for i in range(shards if name == 'c4' else 1)]
        paths = [os.path.join(out_dir, 'download', name, os.path.basename(url)) for url in urls]
        for url, path in zip(urls, paths):
            download(url, path)
    if missing := [path for path in paths if not os.path.isfile(path)]:
        sys.exit(f'error: {", ".join(missing)} not found')
    readers = (jsonl_documents(path) if path.endswith(('.json', '.jsonl', '.json.gz', '.jsonl.gz'))
               else read_documents([path]) for path in paths)
    docs = (piece for reader in readers for doc in reader for piece in pieces(doc.strip(),
                                                                              max_doc_chars))
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, f'{name}.txt')
    n_docs = n_chars = 0
    try:  # into out.tmp, removed on any error: a malformed file writes nothing
        with open(out + '.tmp', 'w', encoding='utf-8', newline='\n') as f:
            for doc in itertools.islice(filter(None, docs), max_docs or None):
                f.write(doc + '\n<|endoftext|>\n')
                n_docs, n_chars = n_docs + 1, n_chars + len(doc)
        if not n_docs:
            sys.exit(f'error: {", ".join(paths)}: no text')
    except BaseException:
        if os.path.exists(out + '.tmp'):
            os.remove(out + '.tmp')
        raise
    os.replace(out + '.tmp', out)
    longest = f' (at most {max_doc_chars:,} characters each)' if max_doc_chars else ''
    print(f'{out}: {n_docs:,} documents{longest}, {n_chars:,} characters from {", ".join(paths)}'
          '\nnext:\n'
          f'python data/prepare.py --text_files={out} --tokenizer=gpt2 --out_dir=out/data/{name}')


if __name__ == '__main__':
    main()
