"""Splits and canaries, both fixed by the dataset's secret.

This module exists to hold everything the secret decides, and nothing else: which split a
document goes to (an HMAC of its content, so the same document always lands in the same split
and nobody without the secret can tell which documents are scored), how a random secret is
drawn so that the eval splits get their share, and the canaries: random strings fixed by the
secret, planted in the eval split files only at places fixed by the secret.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets

import numpy as np

from gpt.chunking import nbytes
from gpt.errors import UserError

EVAL_SPLITS = ("val", "heldout", "test")
SPLITS = ("train",) + EVAL_SPLITS
DEFAULT_FRACTIONS = {"val": 0.04, "heldout": 0.04, "test": 0.04}
CANARIES_PER_SPLIT = 32
CONTROL_CANARIES = 64  # never planted: what an unseen canary scores
CANARY_COPIES = 4  # each planted canary appears this many times in its split
CANARY_PREFIX = "# canary "
CANARY_HEX_CHARS = 32
SECRET_BYTES = 16  # a random secret is secrets.token_hex(SECRET_BYTES)
SECRET_DRAWS = 16  # a random secret is drawn again (this often at most) while an eval split is far below its share
BALANCE_MIN = 0.75  # ... that is, while it gets less than this much of the bytes its fraction promises
MIN_EVAL_TOKENS = 4096
MIN_SPLIT_DOCUMENTS = 5  # a split with fewer documents is prepared, with a warning


def check_secret(secret: str | None) -> str | None:
    """The secret in lower case, or a UserError: it must be hex (it keys an HMAC as bytes)."""
    if secret is None:
        return None
    text = str(secret).strip().lower()
    if not text or len(text) % 2 or not re.fullmatch(r"[0-9a-f]+", text):
        raise UserError(f"dataset secret {secret!r} is not an even number of hex digits; give e.g. "
                        f"{'00' * SECRET_BYTES} (any {2 * SECRET_BYTES} hex digits), or none for a random one")
    return text


def _mac(secret: str, message: bytes) -> bytes:
    return hmac.new(bytes.fromhex(secret), message, hashlib.sha256).digest()


def split_of(text: str, fractions: dict[str, float], secret: str) -> str:
    """The split a document belongs to: HMAC-SHA256(secret, content) read as a uniform number
    in [0, 1). Fixed by content and secret alone (the same document lands in the same split
    of a dataset, whatever else the corpus holds), unknowable without the secret."""
    u = int.from_bytes(_mac(secret, text.encode("utf-8"))[:8], "big") / 2**64
    edge = 0.0
    for name in EVAL_SPLITS:
        edge += fractions[name]
        if u < edge:
            return name
    return "train"


def make_canaries(secret: str) -> dict[str, list[str]]:
    """Random hex strings fixed by the secret: CANARIES_PER_SPLIT planted ones per eval split,
    and CONTROL_CANARIES controls planted nowhere (independent draws, so they score like the
    planted ones would to a model that never saw them)."""
    counts = {**{s: CANARIES_PER_SPLIT for s in EVAL_SPLITS}, "control": CONTROL_CANARIES}
    return {group: [_mac(secret, f"canary:{group}:{i}".encode()).hex()[:CANARY_HEX_CHARS] for i in range(n)]
            for group, n in counts.items()}


def canary_text(canary: str) -> str:
    """The text planted for a canary; the leading newline makes it start a line even after a
    document without a final one."""
    return f"\n{CANARY_PREFIX}{canary}\n"


def placement_rng(secret: str) -> np.random.Generator:
    """Where canaries go between documents: fixed by the secret, unknowable without it."""
    return np.random.default_rng(int.from_bytes(_mac(secret, b"placement"), "big"))


def check_fractions(fractions: dict[str, float]) -> dict[str, float]:
    """DEFAULT_FRACTIONS updated by `fractions`, or a UserError: known eval splits only, leaving train 10% or more."""
    fr = {**DEFAULT_FRACTIONS, **(fractions or {})}
    unknown = set(fr) - set(EVAL_SPLITS)
    if unknown:
        raise UserError(f"unknown split fraction(s) {sorted(unknown)}; allowed: {', '.join(EVAL_SPLITS)}")
    if any(not (0 < v < 1) for v in fr.values()) or sum(fr.values()) >= 0.9:
        raise UserError(f"split fractions {fr} must each be in (0, 1) and leave at least 10% for train")
    return fr


def _too_small(source: str, fractions: dict[str, float], n_bytes: dict[str, int], explicit: bool) -> str | None:
    """Why a split assignment is unusable (a split under its minimum size), or None."""
    for split in SPLITS:
        need = MIN_EVAL_TOKENS if split != "train" else 10 * MIN_EVAL_TOKENS
        if n_bytes[split] < need:
            how = ("give more documents" if split == "train" else
                   f"give more documents (each eval split gets about {fractions[split]:.0%} of them, "
                   f"by a keyed hash of their content)")
            if explicit and split != "train":
                how += ", or another secret"
            return f"corpus {source!r} is too small: the {split} split got {n_bytes[split]} bytes, " \
                   f"needs at least {need}; {how}"
    return None


def _balance(n_bytes: dict[str, int], fractions: dict[str, float]) -> float:
    """The smallest share an eval split got of the bytes its fraction promises (1.0: exactly its share)."""
    total = sum(n_bytes.values())
    return min(n_bytes[s] / (fractions[s] * total) for s in EVAL_SPLITS)


def assign(source: str, texts: list[str], fractions: dict[str, float],
            secret: str | None) -> tuple[str, list[str]]:
    """(secret, split of every text).

    An explicit secret is used as it is. A random one is drawn again, SECRET_DRAWS times at
    most, until every eval split gets at least BALANCE_MIN of the bytes its fraction promises:
    with a few hundred documents (the builtin corpus, one big file cut into dozens) a single
    draw often leaves an eval split with half its share, or under its minimum. Failing that,
    the most balanced draw that meets the minimums is taken. The secret stays random and
    unknown to genomes; only split sizes are conditioned on, never which document is where."""
    sizes = [nbytes(t) for t in texts]
    best: tuple[float, str, list[str]] | None = None
    problem = None
    for _ in range(1 if secret else SECRET_DRAWS):
        chosen = secret or secrets.token_hex(SECRET_BYTES)
        splits = [split_of(t, fractions, chosen) for t in texts]
        n_bytes = dict.fromkeys(SPLITS, 0)
        for split, n in zip(splits, sizes):
            n_bytes[split] += n
        problem = _too_small(source, fractions, n_bytes, explicit=secret is not None)
        if problem is not None:
            continue
        balance = _balance(n_bytes, fractions)
        if secret or balance >= BALANCE_MIN:
            return chosen, splits
        if best is None or balance > best[0]:
            best = (balance, chosen, splits)
    if best is None:
        raise UserError(problem)
    return best[1], best[2]


def few_documents_warnings(docs: dict[str, list[str]]) -> list[str]:
    """A split of very few documents is scored on them alone: its number says little."""
    out = []
    for split in SPLITS:
        if len(docs[split]) < MIN_SPLIT_DOCUMENTS:
            out.append(f"the {split} split got only {len(docs[split])} document(s) (fewer than {MIN_SPLIT_DOCUMENTS}), "
                       f"so its score rests on very few texts; give more (or more, smaller) documents")
    return out


def group_by_split(texts: list[str], hashes: list[str],
                   assigned: list[str]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(texts, content hashes) of every split, each in corpus order."""
    docs: dict[str, list[str]] = {s: [] for s in SPLITS}
    doc_hashes: dict[str, list[str]] = {s: [] for s in SPLITS}
    for text, h, split in zip(texts, hashes, assigned):
        docs[split].append(text)
        doc_hashes[split].append(h)
    return docs, doc_hashes


def planted_sequences(docs: dict[str, list[str]], canaries: dict[str, list[str]],
                      secret: str) -> dict[str, list[tuple[str, int]]]:
    """Every split's texts in order, each with its canary index (-1: a document). Each eval
    split's canaries are planted CANARY_COPIES times between documents, at places fixed by the secret."""
    rng = placement_rng(secret)
    sequences: dict[str, list[tuple[str, int]]] = {}
    for split in SPLITS:
        seq = [(t, -1) for t in docs[split]]
        if split != "train":
            for i, c in enumerate(canaries[split]):
                for _ in range(CANARY_COPIES):
                    seq.insert(int(rng.integers(0, len(seq) + 1)), (canary_text(c), i))
        sequences[split] = seq
    return sequences
