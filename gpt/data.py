"""Corpus preparation: documents -> deterministic content-hash splits -> token memmaps.

A prepared dataset is a folder:

    <root>/<key>/manifest.json      sources, hashes, sizes, canaries (the harness only)
    <root>/<key>/train/train.bin    the only file a genome is ever given
    <root>/<key>/train/bpe.json     BPE merges (with --tokenizer bpe:VOCAB), learned from train only
    <root>/<key>/eval/{val,heldout,test}.bin

Documents go to a split by a hash of their content, so the same document always lands
in the same split and a document can never be in train and in an eval split. Canaries
(random strings fixed by the dataset seed) are planted in the eval splits only; a model
that scores them clearly better than never-planted controls has seen an eval split.

Sources: stdlib, pysource (every .py on sys.path), text:GLOB, parquet:GLOB[:COLUMN] and
hf:REPO[:PATTERN[:COLUMN]] (parquet shards downloaded by gpt.hub). See docs/data.md.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from gpt.bpe import FORMAT as BPE_FORMAT
from gpt.bpe import SPLIT_PATTERN as BPE_SPLIT_PATTERN
from gpt.bpe import parse_spec as parse_tokenizer_spec
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
FORMAT_VERSION = 2
BPE_SAMPLE_BYTES = 8 * 2**20  # BPE merges are learned from at most this much of the train split
BPE_FILE = "train/bpe.json"  # relative to the dataset folder
PARALLEL_MIN_BYTES = 64 * 2**20  # a BPE split this large is tokenized by forked worker processes
PROGRESS_AFTER_S = 3.0  # a preparation that runs longer reports its progress on stderr ...
PROGRESS_EVERY_S = 5.0  # ... this often
HUB_DIR = "hub"  # downloads (hf:...) under the data root


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
        why = exc.strerror or str(exc)
        if path.is_symlink() and not path.exists():
            why = f"it is a broken symlink (to {os.readlink(path)})"
        raise UserError(f"cannot read {path}: {why}; fix its permissions or drop it from the glob")


def _text_documents(pattern: str) -> Iterator[tuple[str, str]]:
    # files, and broken symlinks so that they fail loudly instead of silently shrinking the corpus
    paths = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                   if os.path.isfile(p) or (os.path.islink(p) and not os.path.exists(p)))
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
    pattern, column = _split_parquet_spec(rest)
    paths = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    if not paths:
        raise UserError(f"--data parquet:{pattern} matched no files; check the glob")
    for p in paths:
        yield from parquet_file_documents(p, column)


def parquet_file_documents(path, column: str = "text", batch_size: int = 1024) -> Iterator[tuple[str, str]]:
    """(name, text) for every non-empty row of one parquet file, read `batch_size` rows at a time."""
    import pyarrow.parquet as pq

    p = str(path)
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
    for batch in pf.iter_batches(columns=[column], batch_size=batch_size):
        for value in batch.column(0).to_pylist():
            if value:
                yield f"{p}#{row}", str(value)
            row += 1


def pysource_roots() -> list[str]:
    """The directories of `--data pysource`: sys.path's, without the script's or current
    directory (sys.path[0], which depends on how evo was started) and without this evo
    checkout (so the corpus does not change with every edit of a genome or test)."""
    entries = list(sys.path)
    if entries and not (sys.flags.isolated or getattr(sys.flags, "safe_path", False)):
        entries = entries[1:]
    project = os.path.realpath(Path(__file__).resolve().parent.parent)
    if os.path.basename(project) in ("site-packages", "dist-packages"):
        project = None  # an installed evo: its folder is an ordinary site directory
    roots: list[str] = []
    for entry in entries:
        real = os.path.realpath(entry) if entry else None
        if real and real != project and os.path.isdir(real) and real not in roots:
            roots.append(real)
    return roots


def pysource_files(roots: list[str] | None = None) -> list[str]:
    """Every .py file under the roots (real paths, each once, sorted); __pycache__ and hidden folders skipped."""
    found: set[str] = set()
    for root in pysource_roots() if roots is None else roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d != "__pycache__" and not d.startswith(".")]
            for name in files:
                if name.endswith(".py"):
                    real = os.path.realpath(os.path.join(folder, name))
                    if real not in found and os.path.isfile(real):
                        found.add(real)
    return sorted(found)


def _pysource_documents(roots: list[str] | None = None) -> Iterator[tuple[str, str]]:
    """Every .py file of the running interpreter's sys.path, read one at a time."""
    paths = pysource_files(roots)
    if not paths:
        raise UserError("--data pysource found no .py files on sys.path")
    for p in paths:
        try:
            data = Path(p).read_bytes()
        except OSError:
            continue  # unreadable files of an installation are skipped, not fatal
        yield p, data.decode("utf-8", errors="replace")


def iter_documents(source: str, cache_dir: Path | None = None) -> Iterator[tuple[str, str]]:
    """Yield (name, text) for every document of a data source spec. `cache_dir` holds
    downloads (hf:...); default: the `hub` folder of the default data root."""
    kind, _, rest = source.partition(":")
    if kind == "stdlib" and not rest:
        return _stdlib_documents()
    if kind == "text" and rest:
        return _text_documents(rest)
    if kind == "parquet" and rest:
        return _parquet_documents(rest)
    if kind == "pysource" and not rest:
        return _pysource_documents()
    if kind == "hf" and rest:
        from gpt.hub import hf_documents

        return hf_documents(rest, Path(cache_dir) if cache_dir else default_root() / HUB_DIR)
    raise UserError(f"unknown data source {source!r}; use stdlib, pysource, text:GLOB, parquet:GLOB[:COLUMN] "
                    f"or hf:REPO[:PATTERN[:COLUMN]]")


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
        return load_tokenizer(self.manifest["tokenizer"], self.path)


def _tokenizer_key(spec: str) -> tuple[str, int, dict]:
    """(name, vocab, what of the tokenizer goes into the dataset key). The byte tokenizer's
    entry is exactly what it always was, so byte-level dataset keys and hashes do not move."""
    try:
        name, vocab = parse_tokenizer_spec(spec)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if name == "byte":
        return name, vocab, ByteTokenizer().to_json()
    return name, vocab, {"name": "bpe", "vocab_size": vocab, "sample_bytes": BPE_SAMPLE_BYTES,
                         "format": BPE_FORMAT, "pattern": BPE_SPLIT_PATTERN}


def bpe_sample(texts: list[str], hashes: list[str], budget: int) -> list[str]:
    """A deterministic spread of documents (in order of their content hash) up to `budget` bytes."""
    out, size = [], 0
    for i in sorted(range(len(texts)), key=hashes.__getitem__):
        if size >= budget:
            break
        out.append(texts[i][: budget - size])
        size += len(out[-1])
    return out


class _Reporter:
    """Progress lines on stderr, only for a preparation that runs longer than a few seconds."""

    def __init__(self, after_s: float = PROGRESS_AFTER_S, every_s: float = PROGRESS_EVERY_S):
        self.start = self.last = time.monotonic()
        self.after_s, self.every_s = after_s, every_s
        self.printed = False

    def __call__(self, message, force: bool = False) -> None:
        now = time.monotonic()
        if now - self.start < self.after_s or (now - self.last < self.every_s and not force):
            return
        self.last, self.printed = now, True
        text = message() if callable(message) else message
        print(f"prepare [{now - self.start:5.0f}s] {text}", file=sys.stderr, flush=True)


_WORKER: dict = {}  # what forked tokenizer workers read: the tokenizer and the ordered texts of a split


def _encode_range(bounds: tuple[int, int]) -> np.ndarray:
    tok, texts = _WORKER["tokenizer"], _WORKER["texts"]
    parts = [tok.encode(t) for t in texts[bounds[0]:bounds[1]]]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint16)


def _workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return min(n, 16)


def _encoded(tokenizer, texts: list[str], nbytes: int):
    """Token arrays of `texts`, in order: in forked worker processes for a large BPE split."""
    import multiprocessing

    workers = _workers()
    if (tokenizer.name == "byte" or nbytes < PARALLEL_MIN_BYTES or workers < 2
            or "fork" not in multiprocessing.get_all_start_methods()):
        for t in texts:
            yield tokenizer.encode(t)
        return
    per = max(1, nbytes // (workers * 8))
    bounds, start, size = [], 0, 0
    for i, t in enumerate(texts):
        size += len(t)
        if size >= per:
            bounds.append((start, i + 1))
            start, size = i + 1, 0
    if start < len(texts):
        bounds.append((start, len(texts)))
    _WORKER.update(tokenizer=tokenizer, texts=texts)
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            yield from pool.imap(_encode_range, bounds)
    finally:
        _WORKER.clear()


def _clean_stale_tmp(out: Path) -> None:
    """Remove tmp folders of preparations that died (interrupted): a restart begins cleanly."""
    import shutil

    for tmp in out.parent.glob(out.name + ".tmp*"):
        try:
            pid = int(tmp.name.rsplit(".tmp", 1)[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, PermissionError, OSError):
            pass  # not ours to judge: a live process, another user's, or an odd name


def prepare(
    source: str = DEFAULT_SOURCE,
    root: Path | None = None,
    fractions: dict[str, float] | None = None,
    seed: int = 0,
    progress=None,
    tokenizer: str = "byte",
) -> Dataset:
    """Prepare (or reuse from cache) the dataset for `source`. Same input, same hashes.

    `tokenizer` is "byte" (the default) or "bpe:VOCAB": a BPE tokenizer trained on (a
    bounded sample of) the train split only, saved with the dataset in train/."""
    fractions = check_fractions(fractions or {})
    tok_name, tok_vocab, tok_key = _tokenizer_key(tokenizer)
    canaries = make_canaries(seed)
    report = _Reporter()
    data_root = Path(root or default_root())

    seen: set[str] = set()
    docs: dict[str, list[str]] = {s: [] for s in SPLITS}
    doc_hashes: dict[str, list[str]] = {s: [] for s in SPLITS}
    duplicates = 0
    read_bytes = 0
    for _, text in iter_documents(source, cache_dir=data_root / HUB_DIR):
        h = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if h in seen:
            duplicates += 1
            continue
        seen.add(h)
        split = split_of(text, fractions)
        docs[split].append(text)
        doc_hashes[split].append(h)
        read_bytes += len(text)
        if progress:
            progress(len(seen))
        report(lambda: f"read {len(seen)} documents, {read_bytes / 1e6:.0f} MB")

    key_material = json.dumps(
        {"v": FORMAT_VERSION, "docs": {s: doc_hashes[s] for s in SPLITS}, "fractions": fractions,
         "seed": seed, "tokenizer": tok_key},
        sort_keys=True,
    )
    key = hashlib.sha256(key_material.encode()).hexdigest()[:16]
    out = data_root / key
    if (out / "manifest.json").exists():
        return Dataset(out)

    n_bytes = {s: sum(len(t.encode("utf-8")) for t in docs[s]) for s in SPLITS}
    for split in SPLITS:
        need = MIN_EVAL_TOKENS if split != "train" else 10 * MIN_EVAL_TOKENS
        if n_bytes[split] < need:
            raise UserError(
                f"corpus {source!r} is too small: the {split} split got {n_bytes[split]} bytes, needs at least {need}; "
                + ("give more documents" if split == "train" else
                   f"give more documents (each eval split gets about {fractions[split]:.0%} of them, by content hash)")
            )

    # the order of every split's texts: documents, with canaries planted at seeded boundaries
    rng = np.random.default_rng([seed, 0x5EED])
    sequences: dict[str, list[str]] = {}
    for split in SPLITS:
        texts = list(docs[split])
        if split != "train":
            # a leading newline: the canary starts a line even after a document without a final one
            planted = [f"\n{CANARY_PREFIX}{c}\n" for c in canaries[split] for _ in range(CANARY_COPIES)]
            for c in planted:
                texts.insert(int(rng.integers(0, len(texts) + 1)), c)
        sequences[split] = texts

    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(out)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    (tmp / "train").mkdir(parents=True, exist_ok=True)
    (tmp / "eval").mkdir(parents=True, exist_ok=True)
    try:
        if tok_name == "byte":
            tok = ByteTokenizer()
            tok_manifest = tok.to_json()
        else:
            from gpt.bpe import BPETokenizer

            sample = bpe_sample(docs["train"], doc_hashes["train"], BPE_SAMPLE_BYTES)
            report(f"training a {tok_vocab}-token BPE on {sum(map(len, sample)) / 1e6:.1f} MB of the train split",
                   force=True)
            tok = BPETokenizer.train(sample, tok_vocab)
            del sample
            digest = tok.save(tmp / BPE_FILE)
            tok_manifest = {"name": "bpe", "vocab_size": tok.vocab_size, "requested_vocab_size": tok_vocab,
                            "path": BPE_FILE, "sha256": digest, "sample_bytes": BPE_SAMPLE_BYTES,
                            "format": BPE_FORMAT, "pattern": BPE_SPLIT_PATTERN}
        hashes, n_tokens = {}, {}
        for split in SPLITS:
            path = tmp / ("train/train.bin" if split == "train" else f"eval/{split}.bin")
            hasher, count = hashlib.sha256(), 0
            total = n_bytes[split]
            with open(path, "wb") as f:
                for arr in _encoded(tok, sequences[split], total):
                    data = arr.astype(np.uint16, copy=False).tobytes()
                    f.write(data)
                    hasher.update(data)
                    count += len(arr)
                    report(lambda: f"tokenizing {split}: {count} tokens so far of ~{total / 1e6:.0f} MB")
            hashes[split], n_tokens[split] = hasher.hexdigest(), count
        manifest = {
            "format": FORMAT_VERSION,
            "key": key,
            "source": source,
            "seed": seed,
            "fractions": fractions,
            "tokenizer": tok_manifest,
            "documents": {s: len(docs[s]) for s in SPLITS},
            "duplicates_removed": duplicates,
            "tokens": n_tokens,
            "bytes": n_bytes,
            "hashes": hashes,
            "canaries": {"prefix": CANARY_PREFIX, "copies": CANARY_COPIES, **canaries},
            "python": sys.version.split()[0],
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(out)
    except OSError:  # another process prepared it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    if report.printed:
        report(f"done: {out}", force=True)
    return Dataset(out)
