"""
Byte-level BPE training (Sennrich et al. 2016; byte-level as in GPT-2). The result is a ranks
table {token bytes: rank} that tiktoken loads (model.load_tokenizer), so encoding runs in
tiktoken's fast Rust code and only training is done here, in plain Python.

Text is first split with GPT-2's pattern (words with their leading space, numbers, punctuation);
merges never cross those pieces. Then, repeatedly, the most frequent adjacent pair of tokens is
merged into a new token. Ties go to the smallest pair of ids, so training is deterministic.
"""
import base64
import os
from collections import Counter, defaultdict

import regex
from tqdm import tqdm


def train_bpe(text, vocab_size, pattern, progress=True):
    """Returns ranks {bytes: rank}: the 256 single bytes, then one token per merge."""
    assert vocab_size >= 256, 'a byte-level vocab has at least the 256 bytes'
    # (one piece at a time: findall's list of all the pieces would take ~250 MB per 20M characters)
    piece_counts = Counter(m.group() for m in regex.finditer(pattern, text))
    words = [list(piece.encode('utf-8')) for piece in piece_counts]   # each piece as token ids
    counts = list(piece_counts.values())
    token_bytes = [bytes([b]) for b in range(256)]

    pair_counts = Counter()          # (a, b) -> occurrences in the corpus
    where = defaultdict(set)         # (a, b) -> indices of the words that contain it
    for i, word in enumerate(words):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += counts[i]
            where[pair].add(i)

    ids = {token: i for i, token in enumerate(token_bytes)}
    bar = tqdm(total=vocab_size - 256, desc='bpe merges', disable=not progress, leave=False)
    while len(token_bytes) < vocab_size and pair_counts:  # (none left: each piece is one token)
        best = min(pair_counts, key=lambda p: (-pair_counts[p], p))
        merged_bytes = token_bytes[best[0]] + token_bytes[best[1]]
        if merged_bytes not in ids:  # ('ab', 'c') and ('a', 'bc') make the same token
            ids[merged_bytes] = len(token_bytes)
            token_bytes.append(merged_bytes)
            bar.update()
        new_id = ids[merged_bytes]
        for i in where.pop(best):
            word = words[i]
            for pair in zip(word, word[1:]):         # forget this word's pairs ...
                pair_counts[pair] -= counts[i]
                if pair_counts[pair] == 0:
                    del pair_counts[pair]
            merged, j = [], 0
            while j < len(word):
                if j + 1 < len(word) and (word[j], word[j + 1]) == best:
                    merged.append(new_id)
                    j += 2
                else:
                    merged.append(word[j])
                    j += 1
            words[i] = merged
            for pair in zip(merged, merged[1:]):     # ... and count the merged word's pairs
                pair_counts[pair] += counts[i]
                where[pair].add(i)
    bar.close()
    return {token: rank for rank, token in enumerate(token_bytes)}


def save_bpe(path, ranks):
    """The ranks in tiktoken's format (model.load_tokenizer): one 'base64(bytes) rank' per line."""
    with open(path + '.tmp', 'w') as f:
        f.writelines(f'{base64.b64encode(token).decode()} {ranks[token]}\n' for token in ranks)
    os.replace(path + '.tmp', path)
