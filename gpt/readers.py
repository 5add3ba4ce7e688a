"""Readers: the documents of each kind of data source, as (name, text) pairs.

This module exists to keep file handling (globs, encodings, parquet row batches, the walk over
sys.path) apart from the grammar (gpt.sources) and from splitting (gpt.splits). Each reader
takes the parts `gpt.sources.parse_source` found and yields documents one at a time, so no
corpus is ever held twice; a file that cannot be used is a UserError that names it.
"""
from __future__ import annotations

import glob
import os
import sys
import sysconfig
from pathlib import Path
from typing import Iterator

from gpt.errors import UserError

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"  # the builtin source; hidden from genomes
BUILTIN_ARCHIVE = CORPUS_DIR / "python-docs-3.11.tar.xz"
MAX_BAD_FILES_NAMED = 10

# The documentation's license page reproduces third-party license texts (CC0, BSD, ...) that other
# packages ship too (numpy's and the JDK's license files): a genome could read it elsewhere. Left out.
BUILTIN_EXCLUDED = ("license.rst.txt",)


def builtin_documents(archive: Path = BUILTIN_ARCHIVE) -> Iterator[tuple[str, str]]:
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


def stdlib_documents() -> Iterator[tuple[str, str]]:
    """Every .py of the standard library but its tests and installed packages, in path order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    for path in sorted(root.rglob("*.py")):
        if skip.intersection(path.relative_to(root).parts):
            continue
        yield str(path.relative_to(root)), read_bytes(path).decode("utf-8", errors="replace")


def read_bytes(path: Path) -> bytes:
    """The file's bytes, or a UserError saying why it cannot be read (a broken symlink, permissions)."""
    try:
        return path.read_bytes()
    except OSError as exc:
        why = exc.strerror or str(exc)
        if path.is_symlink() and not path.exists():
            why = f"it is a broken symlink (to {os.readlink(path)})"
        raise UserError(f"cannot read {path}: {why}; fix its permissions or drop it from the glob")


def glob_files(kind: str, pattern: str, example: str) -> list[str]:
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


def text_documents(pattern: str) -> Iterator[tuple[str, str]]:
    """One document per file, strict UTF-8: a binary or mis-encoded file would put replacement
    characters or NULs into the corpus, so every such file is named (after reading them all)."""
    paths = glob_files("text", pattern, "*.txt")
    bad: list[str] = []
    for p in paths:
        data = read_bytes(Path(p))
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


def parquet_documents(pattern: str, column: str) -> Iterator[tuple[str, str]]:
    """One document per row, streamed a record batch at a time (shards are never loaded whole)."""
    for p in glob_files("parquet", pattern, "*.parquet"):
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


def pysource_documents(roots: list[str] | None = None) -> Iterator[tuple[str, str]]:
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
