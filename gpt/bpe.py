"""Byte-level BPE: trained on a bounded sample of the train split, exact byte lengths per token.

Text is first cut into chunks by a regular expression (words with one leading space,
1-3 digit runs, punctuation runs, whitespace runs; every chunk at most a few dozen
characters), then each chunk's UTF-8 bytes are merged pair by pair. Merges never cross a
chunk boundary. Token ids 0..255 are the raw bytes, id 256 + r is merge number r, so:

- decoding is the concatenation of every token's bytes: `decode(encode(text)) == text`
  for any text (the chunks cover the text exactly);
- `token_bytes()[i]` is the exact number of UTF-8 bytes token i stands for, so the
  scorer's bits per byte (sum of token code lengths / sum of token byte lengths) is
  on the same scale as with the byte-level tokenizer.

Training (`train_bpe`) counts the chunks of the sample once, then repeatedly merges the
most frequent adjacent pair, updating pair counts only for the chunks that contain it.
Ties go to the smallest pair of ids, so the same sample always gives the same merges.
Encoding (`BPETokenizer.encode`) applies merges by rank inside each chunk and caches the
result per distinct chunk; source code repeats its chunks so much that most of the work
is the regular expression and the cache lookups.
"""
from __future__ import annotations

import hashlib
import heapq
import json
import re
from collections import Counter, defaultdict
from itertools import chain
from pathlib import Path
from typing import Iterable

import numpy as np

FORMAT = "evo-bpe-1"
DEFAULT_VOCAB = 8192
MAX_VOCAB = 65536  # token ids are stored as uint16
# letters/underscore runs and punctuation runs take one optional leading space; whitespace
# runs leave their last space to the word after them. Bounded repeats keep chunks short,
# which bounds the per-chunk merge work; the alternatives together match every character.
SPLIT_PATTERN = r" ?[^\W\d]{1,48}| ?\d{1,3}| ?[^\s\w]{1,16}|\s{1,48}(?!\S)|\s{1,48}"
CACHE_LIMIT = 1 << 20  # distinct chunks kept in the encode cache before it is cleared


def parse_spec(spec: str) -> tuple[str, int]:
    """'byte' -> ('byte', 256); 'bpe' / 'bpe:8192' -> ('bpe', 8192). Raises ValueError otherwise."""
    name, _, size = spec.strip().partition(":")
    if name == "byte" and not size:
        return "byte", 256
    if name == "bpe":
        try:
            vocab = int(size) if size else DEFAULT_VOCAB
        except ValueError:
            raise ValueError(f"bad BPE vocabulary size {size!r} in tokenizer {spec!r}; use e.g. bpe:8192") from None
        if not 257 <= vocab <= MAX_VOCAB:
            raise ValueError(f"tokenizer {spec!r}: the BPE vocabulary size must be in 257..{MAX_VOCAB}, got {vocab}")
        return "bpe", vocab
    raise ValueError(f"unknown tokenizer {spec!r}; use byte or bpe:VOCAB (e.g. bpe:8192)")


def _merge(word: list[int], a: int, b: int, new: int) -> list[int]:
    """Replace every non-overlapping (a, b), left to right, by `new`."""
    out, i, n = [], 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def train_bpe(texts: Iterable[str], vocab_size: int, pattern: str = SPLIT_PATTERN) -> list[tuple[int, int]]:
    """Merges (pairs of ids, in rank order) learned from `texts`; at most vocab_size - 256 of them.

    Stops early when no pair occurs twice (a tiny sample), so the vocabulary can come out smaller."""
    regex = re.compile(pattern)
    counts: Counter = Counter()
    for text in texts:
        counts.update(regex.findall(text))
    words = [list(chunk.encode("utf-8")) for chunk in counts]
    freqs = list(counts.values())
    del counts
    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for i, word in enumerate(words):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += freqs[i]
            where[pair].add(i)
    heap = [(-c, p) for p, c in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    while len(merges) < vocab_size - 256 and heap:
        neg, pair = heapq.heappop(heap)
        count = pair_counts.get(pair, 0)
        if count != -neg:  # a stale entry: the current count has its own entry
            continue
        if count < 2:
            break
        new = 256 + len(merges)
        merges.append(pair)
        a, b = pair
        delta: dict[tuple[int, int], int] = defaultdict(int)
        for i in where.pop(pair):
            word = words[i]
            merged = _merge(word, a, b, new)
            if len(merged) == len(word):
                continue  # the set is not pruned when a word loses a pair: skip those
            f = freqs[i]
            for p in zip(word, word[1:]):
                delta[p] -= f
            for p in zip(merged, merged[1:]):
                delta[p] += f
                where[p].add(i)
            words[i] = merged
        for p, d in delta.items():
            if d:
                c = pair_counts[p] + d
                if c > 0:
                    pair_counts[p] = c
                    heapq.heappush(heap, (-c, p))
                else:
                    pair_counts.pop(p, None)
        pair_counts.pop(pair, None)
    return merges


class _ChunkCache(dict):
    """chunk -> token ids; a miss runs the merges (so `map(cache.__getitem__, chunks)` does it all)."""

    def __init__(self, encode_chunk):
        super().__init__()
        self._encode_chunk = encode_chunk

    def __missing__(self, chunk: str) -> tuple[int, ...]:
        ids = self[chunk] = self._encode_chunk(chunk)
        return ids


class BPETokenizer:
    """Byte-level BPE with `merges[r] = (a, b)` making token 256 + r. Same interface as ByteTokenizer."""

    name = "bpe"

    def __init__(self, merges: list[tuple[int, int]], pattern: str = SPLIT_PATTERN):
        self.merges = [(int(a), int(b)) for a, b in merges]
        self.pattern = pattern
        self._regex = re.compile(pattern)
        self.vocab_size = 256 + len(self.merges)
        if self.vocab_size > MAX_VOCAB:
            raise ValueError(f"{len(self.merges)} merges give more than {MAX_VOCAB} tokens")
        self._ranks = {pair: r for r, pair in enumerate(self.merges)}
        pieces = [bytes([i]) for i in range(256)]
        for r, (a, b) in enumerate(self.merges):
            if not (a < 256 + r and b < 256 + r):
                raise ValueError(f"merge {r} uses a token that does not exist yet: {(a, b)}")
            pieces.append(pieces[a] + pieces[b])
        self._pieces = pieces
        self._cache = _ChunkCache(self._encode_chunk)

    # ------------------------------------------------------------ encoding
    def _encode_chunk(self, chunk: str) -> tuple[int, ...]:
        ids = list(chunk.encode("utf-8"))
        ranks = self._ranks
        while len(ids) > 1:
            best, best_rank = None, None
            for pair in zip(ids, ids[1:]):
                r = ranks.get(pair)
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = pair, r
            if best is None:
                break
            ids = _merge(ids, best[0], best[1], 256 + best_rank)
        return tuple(ids)

    def encode(self, text: str) -> np.ndarray:
        """Token ids (uint16) of `text`."""
        if len(self._cache) > CACHE_LIMIT:
            self._cache.clear()
        chunks = self._regex.findall(text)
        return np.fromiter(chain.from_iterable(map(self._cache.__getitem__, chunks)), dtype=np.uint16)

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids) -> bytes:
        pieces = self._pieces
        return b"".join(pieces[int(i)] for i in ids)

    def token_bytes(self) -> np.ndarray:
        """Exact UTF-8 byte length of every token id."""
        return np.array([len(p) for p in self._pieces], dtype=np.int64)

    # ------------------------------------------------------------ files
    def to_file_json(self) -> dict:
        return {"format": FORMAT, "pattern": self.pattern, "vocab_size": self.vocab_size,
                "merges": [list(m) for m in self.merges]}

    def save(self, path: str | Path) -> str:
        """Write the merges file; returns its sha256 (recorded in the dataset manifest)."""
        data = json.dumps(self.to_file_json(), separators=(",", ":")).encode()
        Path(path).write_bytes(data)
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def load(cls, path: str | Path, sha256: str | None = None) -> "BPETokenizer":
        data = Path(path).read_bytes()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError(f"BPE merges file {path} does not match the sha256 in the manifest")
        spec = json.loads(data)
        if spec.get("format") != FORMAT:
            raise ValueError(f"{path} is not an {FORMAT} merges file")
        return cls([tuple(m) for m in spec["merges"]], spec["pattern"])

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB) -> "BPETokenizer":
        return cls(train_bpe(texts, vocab_size))
