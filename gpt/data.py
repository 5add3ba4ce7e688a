"""Corpus preparation: documents -> deterministic content-hash splits -> token memmaps.

A prepared dataset is a folder:

    <root>/<key>/manifest.json      sources, hashes, sizes, canaries (the harness only)
    <root>/<key>/train/train.bin    the only file a genome is ever given
    <root>/<key>/eval/{val,heldout,test}.bin

Documents go to a split by a hash of their content, so the same document always lands
in the same split and a document can never be in train and in an eval split. Canaries
(random strings fixed by the dataset seed) are planted in the eval splits only; a model
that scores them clearly better than never-planted controls has seen an eval split.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from gpt.errors import UserError
from gpt.tokenizer import ByteTokenizer, load_tokenizer

EVAL_SPLITS = ("val", "heldout", "test")
SPLITS = ("train",) + EVAL_SPLITS
DEFAULT_FRACTIONS = {"val": 0.04, "heldout": 0.04, "test": 0.04}
DEFAULT_SOURCE = "stdlib"
CANARIES_PER_SPLIT = 32
CANARY_COPIES = 4  # each planted canary appears this many times in its split
CANARY_PREFIX = "# canary "
CANARY_HEX_CHARS = 32
MIN_EVAL_TOKENS = 4096
FORMAT_VERSION = 1


def default_root() -> Path:
    """Where prepared datasets are cached: $EVO_DATA_DIR or ~/.cache/evo/data."""
    return Path(os.environ.get("EVO_DATA_DIR") or Path.home() / ".cache" / "evo" / "data")


# ---------------------------------------------------------------- sources


def _stdlib_documents() -> Iterator[tuple[str, str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    for path in sorted(root.rglob("*.py")):
        if skip.intersection(path.relative_to(root).parts):
            continue
        yield str(path.relative_to(root)), _read_text(path)


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}; fix its permissions or drop it from the glob")


def _text_documents(pattern: str) -> Iterator[tuple[str, str]]:
    paths = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
    if not paths:
        raise UserError(f"--data text:{pattern} matched no files; check the glob (quote it so the shell does not expand it)")
    for p in paths:
        yield p, _read_text(Path(p))


def _split_parquet_spec(rest: str) -> tuple[str, str]:
    pattern, column = rest, "text"
    if ":" in rest:
        head, tail = rest.rsplit(":", 1)
        if tail and not any(c in tail for c in "/*?[\\."):
            pattern, column = head, tail
    return pattern, column


def _parquet_documents(rest: str) -> Iterator[tuple[str, str]]:
    """One document per row, streamed a record batch at a time (shards are never loaded whole)."""
    import pyarrow.parquet as pq

    pattern, column = _split_parquet_spec(rest)
    paths = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    if not paths:
        raise UserError(f"--data parquet:{pattern} matched no files; check the glob")
    for p in paths:
        try:
            pf = pq.ParquetFile(p)
        except Exception as exc:  # pyarrow raises several types for unreadable files
            raise UserError(f"cannot read parquet file {p}: {exc}")
        if column not in pf.schema_arrow.names:
            raise UserError(
                f"parquet file {p} has no column {column!r} (columns: {', '.join(pf.schema_arrow.names)}); "
                f"name one with parquet:GLOB:COLUMN"
            )
        row = 0
        for batch in pf.iter_batches(columns=[column], batch_size=1024):
            for value in batch.column(0).to_pylist():
                if value:
                    yield f"{p}#{row}", str(value)
                row += 1


def iter_documents(source: str) -> Iterator[tuple[str, str]]:
    """Yield (name, text) for every document of a data source spec."""
    kind, _, rest = source.partition(":")
    if kind == "stdlib" and not rest:
        return _stdlib_documents()
    if kind == "text" and rest:
        return _text_documents(rest)
    if kind == "parquet" and rest:
        return _parquet_documents(rest)
    raise UserError(f"unknown data source {source!r}; use stdlib, text:GLOB or parquet:GLOB[:COLUMN]")


# ---------------------------------------------------------------- splitting


def split_of(text: str, fractions: dict[str, float]) -> str:
    """The split a document belongs to, from a hash of its content alone."""
    u = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64
    edge = 0.0
    for name in EVAL_SPLITS:
        edge += fractions[name]
        if u < edge:
            return name
    return "train"


def make_canaries(seed: int) -> dict[str, list[str]]:
    """Random hex strings fixed by the seed: planted ones per eval split, plus controls planted nowhere."""
    rng = np.random.default_rng([seed, 0xCA7A])
    names = list(EVAL_SPLITS) + ["control"]
    return {
        name: ["".join(f"{b:x}" for b in rng.integers(0, 16, CANARY_HEX_CHARS)) for _ in range(CANARIES_PER_SPLIT)]
        for name in names
    }


def check_fractions(fractions: dict[str, float]) -> dict[str, float]:
    fr = {**DEFAULT_FRACTIONS, **(fractions or {})}
    unknown = set(fr) - set(EVAL_SPLITS)
    if unknown:
        raise UserError(f"unknown split fraction(s) {sorted(unknown)}; allowed: {', '.join(EVAL_SPLITS)}")
    if any(not (0 < v < 1) for v in fr.values()) or sum(fr.values()) >= 0.9:
        raise UserError(f"split fractions {fr} must each be in (0, 1) and leave at least 10% for train")
    return fr


@dataclass(frozen=True)
class Dataset:
    """A prepared dataset on disk."""

    path: Path

    @property
    def manifest(self) -> dict:
        return json.loads((self.path / "manifest.json").read_text())

    @property
    def train_path(self) -> Path:
        return self.path / "train" / "train.bin"

    def split_path(self, split: str) -> Path:
        return self.train_path if split == "train" else self.path / "eval" / f"{split}.bin"

    def tokens(self, split: str) -> np.ndarray:
        return np.memmap(self.split_path(split), dtype=np.uint16, mode="r")

    @property
    def tokenizer(self):
        return load_tokenizer(self.manifest["tokenizer"])


def prepare(
    source: str = DEFAULT_SOURCE,
    root: Path | None = None,
    fractions: dict[str, float] | None = None,
    seed: int = 0,
    progress=None,
) -> Dataset:
    """Prepare (or reuse from cache) the dataset for `source`. Same input, same hashes."""
    fractions = check_fractions(fractions or {})
    tokenizer = ByteTokenizer()
    canaries = make_canaries(seed)

    seen: set[str] = set()
    docs: dict[str, list[str]] = {s: [] for s in SPLITS}
    doc_hashes: dict[str, list[str]] = {s: [] for s in SPLITS}
    duplicates = 0
    for _, text in iter_documents(source):
        h = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if h in seen:
            duplicates += 1
            continue
        seen.add(h)
        split = split_of(text, fractions)
        docs[split].append(text)
        doc_hashes[split].append(h)
        if progress:
            progress(len(seen))

    key_material = json.dumps(
        {"v": FORMAT_VERSION, "docs": {s: doc_hashes[s] for s in SPLITS}, "fractions": fractions,
         "seed": seed, "tokenizer": tokenizer.to_json()},
        sort_keys=True,
    )
    key = hashlib.sha256(key_material.encode()).hexdigest()[:16]
    out = Path(root or default_root()) / key
    if (out / "manifest.json").exists():
        return Dataset(out)

    rng = np.random.default_rng([seed, 0x5EED])
    arrays = {}
    for split in SPLITS:
        texts = list(docs[split])
        if split != "train":
            planted = [f"{CANARY_PREFIX}{c}\n" for c in canaries[split] for _ in range(CANARY_COPIES)]
            for c in planted:  # at seeded document boundaries
                texts.insert(int(rng.integers(0, len(texts) + 1)), c)
        arrays[split] = np.concatenate([tokenizer.encode(t) for t in texts]) if texts else np.zeros(0, np.uint16)

    for split in SPLITS:
        need = MIN_EVAL_TOKENS if split != "train" else 10 * MIN_EVAL_TOKENS
        n_real = sum(len(t.encode("utf-8")) for t in docs[split])
        if n_real < need:
            raise UserError(
                f"corpus {source!r} is too small: the {split} split got {n_real} bytes, needs at least {need}; "
                f"give more documents or larger split fractions (--val-fraction etc.)"
            )

    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    (tmp / "train").mkdir(parents=True, exist_ok=True)
    (tmp / "eval").mkdir(parents=True, exist_ok=True)
    hashes = {}
    for split, arr in arrays.items():
        path = tmp / ("train/train.bin" if split == "train" else f"eval/{split}.bin")
        mm = np.memmap(path, dtype=np.uint16, mode="w+", shape=arr.shape)
        mm[:] = arr
        mm.flush()
        del mm
        hashes[split] = hashlib.sha256(arr.tobytes()).hexdigest()
    manifest = {
        "format": FORMAT_VERSION,
        "key": key,
        "source": source,
        "seed": seed,
        "fractions": fractions,
        "tokenizer": tokenizer.to_json(),
        "documents": {s: len(docs[s]) for s in SPLITS},
        "duplicates_removed": duplicates,
        "tokens": {s: int(len(a)) for s, a in arrays.items()},
        "bytes": {s: int(sum(len(t.encode("utf-8")) for t in docs[s])) for s in SPLITS},
        "hashes": hashes,
        "canaries": {"prefix": CANARY_PREFIX, "copies": CANARY_COPIES, **canaries},
        "python": sys.version.split()[0],
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    try:
        tmp.rename(out)
    except OSError:  # another process prepared it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return Dataset(out)
