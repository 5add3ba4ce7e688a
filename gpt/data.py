"""Corpus preparation: documents -> secret-keyed content-hash splits -> token memmaps.

A prepared dataset is a folder:

    <root>/<key>/manifest.json      sources, secret, hashes, sizes, canaries (the harness only)
    <root>/<key>/train/train.bin    the only file a genome is ever given
    <root>/<key>/train/bpe.json     BPE merges (with --tokenizer bpe:VOCAB), learned from train only
    <root>/<key>/eval/{val,heldout,test}.bin

Every dataset has a secret (random unless given; kept in the manifest, which genomes never
see). A document goes to a split by an HMAC of its content under that secret, so the same
document always lands in the same split of a dataset, a document can never be in train and
in an eval split, and nobody without the secret can tell which documents are scored.
Canaries (random strings fixed by the secret) are planted in the eval split files only,
outside the scored stream (their token spans are in the manifest); a model that scores them
clearly better than never-planted controls has seen an eval split.

Sources: builtin (the Python 3.11 documentation, gpt/corpus), stdlib, pysource (every .py
on sys.path), text:GLOB, parquet:GLOB[:COLUMN] and hf:REPO[:PATTERN[:COLUMN]] (parquet
shards downloaded by gpt.hub). Documents over 64 KiB are cut at paragraphs. See docs/data.md.
"""
from __future__ import annotations

import glob
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from gpt.bpe import FORMAT as BPE_FORMAT
from gpt.bpe import SPLIT_PATTERN as BPE_SPLIT_PATTERN
from gpt.bpe import parse_spec as parse_tokenizer_spec
from gpt.errors import UserError
from gpt.tokenizer import ByteTokenizer, load_tokenizer

EVAL_SPLITS = ("val", "heldout", "test")
SPLITS = ("train",) + EVAL_SPLITS
DEFAULT_FRACTIONS = {"val": 0.04, "heldout": 0.04, "test": 0.04}
DEFAULT_SOURCE = "builtin"
CORPUS_DIR = Path(__file__).resolve().parent / "corpus"  # the builtin source; hidden from genomes
BUILTIN_ARCHIVE = CORPUS_DIR / "python-docs-3.11.tar.xz"
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
CHUNK_ABOVE_BYTES = 64 * 2**10  # a longer document is cut into documents of about CHUNK_BYTES
CHUNK_BYTES = 16 * 2**10
MAX_BAD_FILES_NAMED = 10
FORMAT_VERSION = 3
BPE_SAMPLE_BYTES = 8 * 2**20  # BPE merges are learned from at most this much of the train split
BPE_FILE = "train/bpe.json"  # relative to the dataset folder
PARALLEL_MIN_BYTES = 64 * 2**20  # a BPE split this large is tokenized by forked worker processes
PROGRESS_AFTER_S = 3.0  # a preparation that runs longer reports its progress on stderr ...
PROGRESS_EVERY_S = 5.0  # ... this often
HUB_DIR = "hub"  # downloads (hf:...) under the data root
SOURCE_KINDS = "builtin, stdlib, pysource, text:GLOB, parquet:GLOB[:COLUMN] or hf:REPO[:PATTERN[:COLUMN]]"


def default_root() -> Path:
    """Where prepared datasets are cached: $EVO_DATA_DIR or ~/.cache/evo/data."""
    return Path(os.environ.get("EVO_DATA_DIR") or Path.home() / ".cache" / "evo" / "data")


# ---------------------------------------------------------------- sources


def _parse_source(source: str) -> tuple[str, str]:
    """(kind, rest) of a source spec, or a UserError listing the kinds."""
    kind, _, rest = source.partition(":")
    if (kind in ("builtin", "stdlib", "pysource") and not rest) or (kind in ("text", "parquet", "hf") and rest):
        return kind, rest
    raise UserError(f"unknown data source {source!r}; use {SOURCE_KINDS}")


# The documentation's license page reproduces third-party license texts (CC0, BSD, ...) that other
# packages ship too (numpy's and the JDK's license files): a genome could read it elsewhere. Left out.
BUILTIN_EXCLUDED = ("license.rst.txt",)


def _builtin_documents(archive: Path = BUILTIN_ARCHIVE) -> Iterator[tuple[str, str]]:
    """Every file of the committed documentation archive but BUILTIN_EXCLUDED, in name order, as strict UTF-8."""
    import tarfile

    try:
        with tarfile.open(archive, "r:*") as tar:
            members = sorted((m for m in tar.getmembers()
                              if m.isfile() and m.name.removeprefix("./") not in BUILTIN_EXCLUDED), key=lambda m: m.name)
            for member in members:
                name = member.name.removeprefix("./")
                try:
                    yield name, tar.extractfile(member).read().decode("utf-8")
                except UnicodeDecodeError:
                    raise UserError(f"{archive} member {name} is not UTF-8: the archive is damaged; "
                                    f"restore it (git checkout -- {archive.name}) or reinstall evo") from None
    except (OSError, tarfile.TarError) as exc:
        raise UserError(f"cannot read the builtin corpus {archive}: {exc}; restore it (git checkout) or reinstall evo")


def _stdlib_documents() -> Iterator[tuple[str, str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    for path in sorted(root.rglob("*.py")):
        if skip.intersection(path.relative_to(root).parts):
            continue
        yield str(path.relative_to(root)), _read_bytes(path).decode("utf-8", errors="replace")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        why = exc.strerror or str(exc)
        if path.is_symlink() and not path.exists():
            why = f"it is a broken symlink (to {os.readlink(path)})"
        raise UserError(f"cannot read {path}: {why}; fix its permissions or drop it from the glob")


def _glob_files(kind: str, pattern: str, example: str) -> list[str]:
    """The files (and broken symlinks, so that they fail loudly instead of silently shrinking
    the corpus) a source glob matches, sorted; a directory or an empty match is a UserError."""
    expanded = os.path.expanduser(pattern)
    if os.path.isdir(expanded):
        raise UserError(f"--data {kind}:{pattern} is a directory, not a glob of files; name its files, e.g. "
                        f"--data {kind}:'{pattern.rstrip(os.sep)}/**/{example}' (quoted, so the shell does not "
                        f"expand it)")
    paths = sorted(p for p in glob.glob(expanded, recursive=True)
                   if os.path.isfile(p) or (os.path.islink(p) and not os.path.exists(p)))
    if not paths:
        raise UserError(f"--data {kind}:{pattern} matched no files; check the glob (quote it so the shell does not "
                        f"expand it)")
    return paths


def _text_problem(data: bytes) -> str | None:
    """Why a file is not a text document, or None."""
    if b"\x00" in data:
        return "NUL bytes"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 at byte {exc.start}"
    return None


def _text_documents(pattern: str) -> Iterator[tuple[str, str]]:
    """One document per file, strict UTF-8: a binary or mis-encoded file would put replacement
    characters or NULs into the corpus, so every such file is named (after reading them all)."""
    paths = _glob_files("text", pattern, "*.txt")
    bad: list[str] = []
    for p in paths:
        data = _read_bytes(Path(p))
        problem = _text_problem(data)
        if problem:
            bad.append(f"{p} ({problem})")
        else:
            yield p, data.decode("utf-8")
    if bad:
        more = f" and {len(bad) - MAX_BAD_FILES_NAMED} more" if len(bad) > MAX_BAD_FILES_NAMED else ""
        raise UserError(f"{len(bad)} of the {len(paths)} files matched by --data text:{pattern} are not UTF-8 text "
                        f"without NUL bytes: {', '.join(bad[:MAX_BAD_FILES_NAMED])}{more}; exclude them from the "
                        f"glob (e.g. a narrower pattern such as text:'DIR/**/*.txt'), or convert them to UTF-8")


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
    for p in _glob_files("parquet", pattern, "*.parquet"):
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
    """Yield (name, text) for every document of a data source spec, as its source holds it
    (before chunking: see `documents`). `cache_dir` holds downloads (hf:...); default: the
    `hub` folder of the default data root."""
    kind, rest = _parse_source(source)
    if kind == "builtin":
        return _builtin_documents()
    if kind == "stdlib":
        return _stdlib_documents()
    if kind == "text":
        return _text_documents(rest)
    if kind == "parquet":
        return _parquet_documents(rest)
    if kind == "pysource":
        return _pysource_documents()
    from gpt.hub import hf_documents

    return hf_documents(rest, _hub_cache(cache_dir))


def _hub_cache(cache_dir: Path | None) -> Path:
    return Path(cache_dir) if cache_dir else default_root() / HUB_DIR


def documents(source: str, cache_dir: Path | None = None) -> Iterator[tuple[str, str]]:
    """The documents `prepare` splits: those of the source, each over CHUNK_ABOVE_BYTES cut
    into pieces (named NAME#chunkI), so a corpus of a few big files still spreads over the splits."""
    for name, text in iter_documents(source, cache_dir):
        pieces = chunk_text(text)
        if len(pieces) == 1:
            yield name, text
        else:
            for i, piece in enumerate(pieces):
                yield f"{name}#chunk{i}", piece


def _minimal_dirs(paths: Iterable[str]) -> list[str]:
    """The paths, each once, without those that lie inside another one (hiding that one hides them)."""
    kept: list[str] = []
    for p in sorted(set(paths)):
        if not any(p == q or p.startswith(q.rstrip(os.sep) + os.sep) for q in kept):
            kept.append(p)
    return kept


def document_roots(source: str, cache_dir: Path | None = None) -> list[str] | None:
    """The real directories on disk that hold the documents of a source: what a sandbox must
    hide from a genome so that it cannot read an eval document. None for stdlib and pysource:
    their documents are the interpreter's own runtime, which a genome needs and cannot be denied.
    `cache_dir` is the hub download folder (hf:...), as for `iter_documents`."""
    kind, rest = _parse_source(source)
    if kind in ("stdlib", "pysource"):
        return None
    if kind == "builtin":
        return [os.path.realpath(CORPUS_DIR)]
    if kind == "hf":
        from gpt.hub import local_dir, parse_spec

        return [os.path.realpath(local_dir(_hub_cache(cache_dir), parse_spec(rest)))]
    pattern = rest if kind == "text" else _split_parquet_spec(rest)[0]
    files = (p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
    return _minimal_dirs(os.path.dirname(os.path.realpath(p)) for p in files)


# ---------------------------------------------------------------- chunking


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


def _lines(text: str) -> list[str]:
    """Lines with their "\\n" (only "\\n" ends a line: str.splitlines also cuts at \\f, \\x1c, ...)."""
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _paragraphs(text: str) -> Iterator[str]:
    """Runs of lines, each ended by a blank line (or the end of the text)."""
    run: list[str] = []
    for line in _lines(text):
        run.append(line)
        if not line.strip():
            yield "".join(run)
            run = []
    if run:
        yield "".join(run)


def _byte_pieces(line: str, size: int) -> Iterator[str]:
    """`line` in pieces of at most `size` bytes, each cut at a UTF-8 character boundary."""
    data = line.encode("utf-8")
    i = 0
    while i < len(data):
        j = min(i + size, len(data))
        while j < len(data) and data[j] & 0xC0 == 0x80:  # a continuation byte: not a boundary
            j -= 1
        yield data[i:j].decode("utf-8")
        i = j


def _pieces(text: str) -> Iterator[tuple[str, int]]:
    """(piece, bytes): paragraphs; a paragraph over 2*CHUNK_BYTES as lines; such a line as byte pieces."""
    limit = 2 * CHUNK_BYTES
    for para in _paragraphs(text):
        n = _nbytes(para)
        if n <= limit:
            yield para, n
            continue
        for line in _lines(para):
            n = _nbytes(line)
            if n <= limit:
                yield line, n
            else:
                for piece in _byte_pieces(line, CHUNK_BYTES):
                    yield piece, _nbytes(piece)


def chunk_text(text: str) -> list[str]:
    """`text` as one document, or, over CHUNK_ABOVE_BYTES, as documents of about CHUNK_BYTES.

    Real corpora come as a few big files too (tinyshakespeare is one 1.1 MB file); as single
    documents they could not be split at all. Pieces (see `_pieces`) are packed in order: a
    document is closed before the piece that would take it past CHUNK_BYTES once it holds
    CHUNK_BYTES/2, and a short tail joins the document before it. So every document has at
    least CHUNK_BYTES/2 and at most 3*CHUNK_BYTES bytes (mostly at most CHUNK_BYTES), and the
    documents concatenate to exactly `text`."""
    if len(text) * 4 <= CHUNK_ABOVE_BYTES or _nbytes(text) <= CHUNK_ABOVE_BYTES:
        return [text]
    chunks: list[list[str]] = []
    sizes: list[int] = []
    current: list[str] = []
    size = 0
    for piece, n in _pieces(text):
        if current and size >= CHUNK_BYTES // 2 and size + n > CHUNK_BYTES:
            chunks.append(current)
            sizes.append(size)
            current, size = [], 0
        current.append(piece)
        size += n
    if current and chunks and size < CHUNK_BYTES // 2:
        chunks[-1].extend(current)
    elif current:
        chunks.append(current)
    return ["".join(c) for c in chunks]


# ---------------------------------------------------------------- secret, splits, canaries


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


def _placement_rng(secret: str) -> np.random.Generator:
    """Where canaries go between documents: fixed by the secret, unknowable without it."""
    return np.random.default_rng(int.from_bytes(_mac(secret, b"placement"), "big"))


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
        """Every token of the split file, planted canaries included."""
        return np.memmap(self.split_path(split), dtype=np.uint16, mode="r")

    def canary_spans(self, split: str) -> np.ndarray:
        """[n, 3] int64 rows (start, end, canary index), token offsets into the split file, end
        exclusive, sorted: where each planted canary text lies. Empty for train."""
        if split == "train":
            return np.zeros((0, 3), np.int64)
        spans = self.manifest.get("canary_spans")
        if spans is None:
            raise UserError(f"dataset {self.path} was prepared by an older evo (no canary spans in its manifest); "
                            f"prepare it again (evo prepare)")
        return np.asarray(spans[split], dtype=np.int64).reshape(-1, 3)

    def text_tokens(self, split: str) -> np.ndarray:
        """The split's documents only: its tokens with every canary span cut out. This is the
        stream to score; canaries stay in the files so that a model trained on an eval split
        file has seen them. For train it is just the tokens."""
        tokens = self.tokens(split)
        spans = self.canary_spans(split)
        if not len(spans):
            return tokens
        starts = np.concatenate([[0], spans[:, 1]])
        ends = np.concatenate([spans[:, 0], [len(tokens)]])
        return np.concatenate([tokens[a:b] for a, b in zip(starts, ends)])

    @property
    def tokenizer(self):
        return load_tokenizer(self.manifest["tokenizer"], self.path)


def _tokenizer_key(spec: str) -> tuple[str, int, dict]:
    """(name, vocab, what of the tokenizer goes into the dataset key)."""
    try:
        name, vocab = parse_tokenizer_spec(spec)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if name == "byte":
        return name, vocab, ByteTokenizer().to_json()
    return name, vocab, {"name": "bpe", "vocab_size": vocab, "sample_bytes": BPE_SAMPLE_BYTES,
                         "format": BPE_FORMAT, "pattern": BPE_SPLIT_PATTERN}


def dataset_key(doc_hashes: Iterable[str], fractions: dict[str, float], tokenizer_key: dict,
                secret: str | None) -> str:
    """The cache folder name: a hash of what fixes the dataset. An explicit secret is part of
    it; a random one is not (it is drawn after the cache missed), so preparing the same corpus
    again finds the dataset made before, with the secret stored in its manifest."""
    material = json.dumps({"v": FORMAT_VERSION, "docs": sorted(doc_hashes), "fractions": fractions,
                           "tokenizer": tokenizer_key, "secret": secret}, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:16]


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


def _encode_range(bounds: tuple[int, int]) -> list[np.ndarray]:
    tok, texts = _WORKER["tokenizer"], _WORKER["texts"]
    return [tok.encode(t) for t in texts[bounds[0]:bounds[1]]]


def _workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return min(n, 16)


def _encoded(tokenizer, texts: list[str], nbytes: int) -> Iterator[np.ndarray]:
    """The token array of each of `texts`, one per text, in order (each text is tokenized on
    its own, so canary spans are exact): in forked worker processes for a large BPE split."""
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
            for arrays in pool.imap(_encode_range, bounds):
                yield from arrays
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


def _write_manifest(folder: Path, manifest: dict) -> None:
    """Write manifest.json whole or not at all (a reader never sees half of it)."""
    tmp = folder / f"manifest.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, folder / "manifest.json")


def _note_roots(dataset: Dataset, roots: list[str] | None) -> None:
    """A cached dataset found again from other files of the same content (a copied corpus):
    its manifest gets those folders too, so that a sandbox hides every copy."""
    manifest = dataset.manifest
    stored = manifest.get("document_roots")
    if roots is None or (stored is not None and set(roots) <= set(stored)):
        return
    manifest["document_roots"] = _minimal_dirs((stored or []) + roots)
    try:
        _write_manifest(dataset.path, manifest)
    except OSError as exc:  # a read-only shared cache: the dataset is still usable
        print(f"warning: cannot record the document folders {roots} in {dataset.path}/manifest.json ({exc}); "
              f"a sandbox will not hide them from genomes", file=sys.stderr, flush=True)


def _read_corpus(source: str, data_root: Path, progress, report) -> tuple[list[str], list[str], int]:
    """(texts, their sha256 hex, duplicates removed) of the source's documents, chunked, each content once."""
    texts: list[str] = []
    hashes: list[str] = []
    seen: set[str] = set()
    duplicates = read_bytes = 0
    for _, text in documents(source, cache_dir=data_root / HUB_DIR):
        h = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if h in seen:
            duplicates += 1
            continue
        seen.add(h)
        texts.append(text)
        hashes.append(h)
        read_bytes += len(text)
        if progress:
            progress(len(seen))
        report(lambda: f"read {len(seen)} documents, {read_bytes / 1e6:.0f} MB")
    return texts, hashes, duplicates


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


def _assign(source: str, texts: list[str], fractions: dict[str, float],
            secret: str | None) -> tuple[str, list[str]]:
    """(secret, split of every text).

    An explicit secret is used as it is. A random one is drawn again, SECRET_DRAWS times at
    most, until every eval split gets at least BALANCE_MIN of the bytes its fraction promises:
    with a few hundred documents (the builtin corpus, one big file cut into dozens) a single
    draw often leaves an eval split with half its share, or under its minimum. Failing that,
    the most balanced draw that meets the minimums is taken. The secret stays random and
    unknown to genomes; only split sizes are conditioned on, never which document is where."""
    sizes = [_nbytes(t) for t in texts]
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


def _few_documents_warnings(docs: dict[str, list[str]]) -> list[str]:
    """A split of very few documents is scored on them alone: its number says little."""
    out = []
    for split in SPLITS:
        if len(docs[split]) < MIN_SPLIT_DOCUMENTS:
            out.append(f"the {split} split got only {len(docs[split])} document(s) (fewer than {MIN_SPLIT_DOCUMENTS}), "
                       f"so its score rests on very few texts; give more (or more, smaller) documents")
    return out


def prepare(
    source: str = DEFAULT_SOURCE,
    root: Path | None = None,
    fractions: dict[str, float] | None = None,
    secret: str | None = None,
    progress=None,
    tokenizer: str = "byte",
) -> Dataset:
    """Prepare (or reuse from cache) the dataset for `source`.

    `secret` (hex) fixes the splits, the canaries and where they are planted; None draws a
    random one, stored in the manifest. The same corpus with the same explicit secret gives
    the same files; the same corpus without one gives back the dataset prepared before.
    `tokenizer` is "byte" (the default) or "bpe:VOCAB": a BPE tokenizer trained on (a
    bounded sample of) the train split only, saved with the dataset in train/."""
    fractions = check_fractions(fractions or {})
    explicit = check_secret(secret)
    tok_name, tok_vocab, tok_key = _tokenizer_key(tokenizer)
    report = _Reporter()
    data_root = Path(root or default_root())

    texts, text_hashes, duplicates = _read_corpus(source, data_root, progress, report)
    roots = document_roots(source, cache_dir=data_root / HUB_DIR)
    key = dataset_key(text_hashes, fractions, tok_key, explicit)
    out = data_root / key
    if (out / "manifest.json").exists():
        _note_roots(Dataset(out), roots)
        return Dataset(out)

    secret, assigned = _assign(source, texts, fractions, explicit)
    docs: dict[str, list[str]] = {s: [] for s in SPLITS}
    doc_hashes: dict[str, list[str]] = {s: [] for s in SPLITS}
    for text, h, split in zip(texts, text_hashes, assigned):
        docs[split].append(text)
        doc_hashes[split].append(h)
    del texts, text_hashes, assigned
    n_bytes = {s: sum(_nbytes(t) for t in docs[s]) for s in SPLITS}
    warnings = _few_documents_warnings(docs)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr, flush=True)

    # every split's texts in order, each with its canary index (-1: a document); canaries are
    # planted between documents at places fixed by the secret
    canaries = make_canaries(secret)
    rng = _placement_rng(secret)
    sequences: dict[str, list[tuple[str, int]]] = {}
    for split in SPLITS:
        seq = [(t, -1) for t in docs[split]]
        if split != "train":
            for i, c in enumerate(canaries[split]):
                for _ in range(CANARY_COPIES):
                    seq.insert(int(rng.integers(0, len(seq) + 1)), (canary_text(c), i))
        sequences[split] = seq

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
        hashes, n_tokens, spans, scored = {}, {}, {}, {}
        for split in SPLITS:
            path = tmp / ("train/train.bin" if split == "train" else f"eval/{split}.bin")
            hasher, count, split_spans = hashlib.sha256(), 0, []
            total = n_bytes[split]
            seq = sequences[split]
            with open(path, "wb") as f:
                for arr, (_, canary) in zip(_encoded(tok, [t for t, _ in seq], total), seq):
                    data = arr.astype(np.uint16, copy=False).tobytes()
                    f.write(data)
                    hasher.update(data)
                    if canary >= 0:
                        split_spans.append([count, count + len(arr), canary])
                    count += len(arr)
                    report(lambda: f"tokenizing {split}: {count} tokens so far of ~{total / 1e6:.0f} MB")
            hashes[split], n_tokens[split] = hasher.hexdigest(), count
            spans[split] = split_spans
            scored[split] = count - sum(e - s for s, e, _ in split_spans)
        manifest = {
            "format": FORMAT_VERSION,
            "key": key,
            "source": source,
            "secret": secret,
            "document_roots": roots,
            "fractions": fractions,
            "tokenizer": tok_manifest,
            "documents": {s: len(docs[s]) for s in SPLITS},
            "duplicates_removed": duplicates,
            "tokens": n_tokens,
            "scored_tokens": scored,
            "bytes": n_bytes,
            "hashes": hashes,
            "canaries": {"prefix": CANARY_PREFIX, "copies": CANARY_COPIES, **canaries},
            "canary_spans": {s: spans[s] for s in EVAL_SPLITS},
            "warnings": warnings,
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
