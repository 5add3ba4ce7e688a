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

This module runs a preparation: it reads the corpus once, finds a dataset prepared before in
the cache, or tokenizes the splits into memmaps and writes the manifest. The parts live in
modules of their own, and every name of them that other code uses is importable from here:

    gpt.sources    the source grammar (SOURCE_GRAMMAR, parse_source), iter_documents, document_roots
    gpt.readers    the reader of each kind of source (text files, parquet rows, sys.path, ...)
    gpt.chunking   big documents cut at paragraphs (chunk_text, documents)
    gpt.splits     the secret: splits, canaries and where they are planted
    gpt.dataset    Dataset, the reader of a prepared folder

See docs/data.md.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from gpt.bpe import FORMAT as BPE_FORMAT
from gpt.bpe import SPLIT_PATTERN as BPE_SPLIT_PATTERN
from gpt.bpe import parse_spec as parse_tokenizer_spec
from gpt.chunking import CHUNK_ABOVE_BYTES, CHUNK_BYTES, chunk_text, documents, nbytes  # noqa: F401
from gpt.dataset import Dataset
from gpt.errors import UserError
from gpt.readers import (BUILTIN_ARCHIVE, BUILTIN_EXCLUDED, CORPUS_DIR, MAX_BAD_FILES_NAMED,  # noqa: F401
                         parquet_file_documents, pysource_files, pysource_roots)
from gpt.sources import (HUB_DIR, SOURCE_GRAMMAR, Source, default_root, document_roots,  # noqa: F401
                         iter_documents, minimal_dirs, parse_source)
from gpt.splits import (BALANCE_MIN, CANARIES_PER_SPLIT, CANARY_COPIES, CANARY_HEX_CHARS,  # noqa: F401
                        CANARY_PREFIX, CONTROL_CANARIES, DEFAULT_FRACTIONS, EVAL_SPLITS, MIN_EVAL_TOKENS,
                        MIN_SPLIT_DOCUMENTS, SECRET_BYTES, SECRET_DRAWS, SPLITS, assign, canary_text,
                        check_fractions, check_secret, few_documents_warnings, group_by_split, make_canaries,
                        planted_sequences, split_of)
from gpt.tokenizer import ByteTokenizer

DEFAULT_SOURCE = "builtin"
FORMAT_VERSION = 3
BPE_SAMPLE_BYTES = 8 * 2**20  # BPE merges are learned from at most this much of the train split
BPE_FILE = "train/bpe.json"  # relative to the dataset folder
PARALLEL_MIN_BYTES = 64 * 2**20  # a BPE split this large is tokenized by forked worker processes
PROGRESS_AFTER_S = 3.0  # a preparation that runs longer reports its progress on stderr ...
PROGRESS_EVERY_S = 5.0  # ... this often


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
    manifest["document_roots"] = minimal_dirs((stored or []) + roots)
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


def _train_tokenizer(name: str, vocab: int, texts: list[str], hashes: list[str], folder: Path, report):
    """(tokenizer, its manifest entry): the byte tokenizer, or a BPE learned from (a bounded
    sample of) the train split's texts and saved in `folder`."""
    if name == "byte":
        tok = ByteTokenizer()
        return tok, tok.to_json()
    from gpt.bpe import BPETokenizer

    sample = bpe_sample(texts, hashes, BPE_SAMPLE_BYTES)
    report(f"training a {vocab}-token BPE on {sum(map(len, sample)) / 1e6:.1f} MB of the train split", force=True)
    tok = BPETokenizer.train(sample, vocab)
    del sample
    digest = tok.save(folder / BPE_FILE)
    return tok, {"name": "bpe", "vocab_size": tok.vocab_size, "requested_vocab_size": vocab, "path": BPE_FILE,
                 "sha256": digest, "sample_bytes": BPE_SAMPLE_BYTES, "format": BPE_FORMAT,
                 "pattern": BPE_SPLIT_PATTERN}


def _write_split(path: Path, tok, split: str, seq: list[tuple[str, int]], total: int,
                 report) -> tuple[str, int, list[list[int]]]:
    """Tokenize a split's sequence into `path` as uint16: (sha256 of the file, tokens, canary spans)."""
    hasher, count, spans = hashlib.sha256(), 0, []
    with open(path, "wb") as f:
        for arr, (_, canary) in zip(_encoded(tok, [t for t, _ in seq], total), seq):
            data = arr.astype(np.uint16, copy=False).tobytes()
            f.write(data)
            hasher.update(data)
            if canary >= 0:
                spans.append([count, count + len(arr), canary])
            count += len(arr)
            report(lambda: f"tokenizing {split}: {count} tokens so far of ~{total / 1e6:.0f} MB")
    return hasher.hexdigest(), count, spans


def _write_splits(folder: Path, tok, sequences: dict[str, list[tuple[str, int]]], n_bytes: dict[str, int],
                  report) -> dict[str, dict]:
    """Every split file under `folder`: the manifest's hashes, tokens, scored_tokens and canary spans."""
    hashes, n_tokens, spans, scored = {}, {}, {}, {}
    for split in SPLITS:
        path = folder / ("train/train.bin" if split == "train" else f"eval/{split}.bin")
        hashes[split], n_tokens[split], spans[split] = _write_split(path, tok, split, sequences[split],
                                                                    n_bytes[split], report)
        scored[split] = n_tokens[split] - sum(e - s for s, e, _ in spans[split])
    return {"hashes": hashes, "tokens": n_tokens, "scored_tokens": scored, "spans": spans}


def _manifest(*, key: str, source: str, secret: str, roots: list[str] | None, fractions: dict[str, float],
              tokenizer: dict, docs: dict[str, list[str]], duplicates: int, written: dict[str, dict],
              n_bytes: dict[str, int], canaries: dict[str, list[str]], warnings: list[str]) -> dict:
    """The manifest of a prepared dataset (harness only: it holds the secret and the canaries)."""
    return {
        "format": FORMAT_VERSION,
        "key": key,
        "source": source,
        "secret": secret,
        "document_roots": roots,
        "fractions": fractions,
        "tokenizer": tokenizer,
        "documents": {s: len(docs[s]) for s in SPLITS},
        "duplicates_removed": duplicates,
        "tokens": written["tokens"],
        "scored_tokens": written["scored_tokens"],
        "bytes": n_bytes,
        "hashes": written["hashes"],
        "canaries": {"prefix": CANARY_PREFIX, "copies": CANARY_COPIES, **canaries},
        "canary_spans": {s: written["spans"][s] for s in EVAL_SPLITS},
        "warnings": warnings,
        "python": sys.version.split()[0],
    }


def _fresh_tmp(out: Path) -> Path:
    """The folder a preparation writes into (`<key>.tmp<pid>`, with train/ and eval/), stale ones removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(out)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    (tmp / "train").mkdir(parents=True, exist_ok=True)
    (tmp / "eval").mkdir(parents=True, exist_ok=True)
    return tmp


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished folder into place; if another process prepared it first, keep theirs."""
    try:
        tmp.rename(out)
    except OSError:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def _write_dataset(out: Path, *, tok_spec: tuple[str, int], docs, doc_hashes, sequences, n_bytes, report,
                   **manifest) -> None:
    """Tokenize the splits into `<key>.tmp<pid>`, write its manifest, and rename it to `out` (on any
    failure the tmp folder is removed: the cache never holds half a dataset)."""
    tmp = _fresh_tmp(out)
    try:
        tok, tok_manifest = _train_tokenizer(*tok_spec, docs["train"], doc_hashes["train"], tmp, report)
        written = _write_splits(tmp, tok, sequences, n_bytes, report)
        manifest = _manifest(**manifest, tokenizer=tok_manifest, docs=docs, written=written, n_bytes=n_bytes)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish(tmp, out)


def _cache_error(data_root: Path, exc: OSError, needed: int) -> UserError:
    """A dataset that cannot be written into the cache: a full disk, a read-only folder, another error."""
    where = f"cannot write the dataset into the data cache {data_root}"
    elsewhere = "set EVO_DATA_DIR (evo prepare: --out) to a folder"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"{where}: no space left on its disk (the dataset needs about {needed / 1e6:.1f} MB); free "
                         f"space there, or {elsewhere} on a disk with room")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        why = "it is on a read-only file system" if exc.errno == errno.EROFS else "it is not writable"
        return UserError(f"{where}: {why} ({exc.filename}: {exc.strerror}); {elsewhere} you can write, or prepare "
                         "the dataset once where the cache is writable (a read-only cache is fine once it holds it)")
    return UserError(f"{where}: {exc.strerror} ({exc.filename}); check the disk, or {elsewhere} on another disk")


def prepare(
    source: str = DEFAULT_SOURCE,
    root: Path | None = None,
    fractions: dict[str, float] | None = None,
    secret: str | None = None,
    progress=None,
    tokenizer: str = "byte",
) -> Dataset:
    """Prepare (or reuse from cache) the dataset for `source` (a spec of gpt.sources.SOURCE_GRAMMAR).

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

    secret, assigned = assign(source, texts, fractions, explicit)
    docs, doc_hashes = group_by_split(texts, text_hashes, assigned)
    del texts, text_hashes, assigned
    n_bytes = {s: sum(nbytes(t) for t in docs[s]) for s in SPLITS}
    warnings = few_documents_warnings(docs)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    canaries = make_canaries(secret)
    sequences = planted_sequences(docs, canaries, secret)

    made_root = not data_root.exists()
    try:
        _write_dataset(out, key=key, source=source, secret=secret, roots=roots, fractions=fractions,
                       tok_spec=(tok_name, tok_vocab), docs=docs, doc_hashes=doc_hashes, duplicates=duplicates,
                       sequences=sequences, n_bytes=n_bytes, canaries=canaries, warnings=warnings, report=report)
    except OSError as exc:
        if made_root:
            try:
                data_root.rmdir()  # made by this preparation, and empty again
            except OSError:
                pass
        raise _cache_error(data_root, exc, 2 * sum(n_bytes.values())) from None
    if report.printed:
        report(f"done: {out}", force=True)
    return Dataset(out)
