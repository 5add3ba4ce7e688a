"""Data source specs: the one grammar of `--data`, its parser, and where a source's documents are.

This module exists so that the grammar is written down once. The CLI help, the config check,
`prepare` and `gpt.hub` all take `SOURCE_GRAMMAR` and `parse_source` from here; nothing else
splits a spec string. It imports only the standard library (the readers that need pyarrow or
the network are loaded when documents are read), so validating a config stays cheap.

    builtin                                    the Python 3.11 documentation (gpt/corpus), the default
    stdlib                                     every .py of the standard library
    pysource                                   every .py on sys.path
    text:GLOB                                  one document per matching file
    parquet:GLOB[:COLUMN]                      one document per row of COLUMN (default "text")
    hf:OWNER/NAME[@REVISION][:PATTERN[:COLUMN]]  parquet shards of a Hugging Face dataset (gpt.hub)

In `parquet:` the last `:PART` is taken as the column only if it holds none of `/ * ? [ \\ .`
(otherwise it is part of the glob). `stdlib` and `pysource` are the genome's own runtime: they
can never be hidden from it (see gpt.sealing), so runs on them are never sealed.
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from gpt.errors import UserError

SOURCE_GRAMMAR = ("builtin | stdlib | pysource | text:GLOB | parquet:GLOB[:COLUMN] | "
                  "hf:OWNER/NAME[@REVISION][:PATTERN[:COLUMN]] (stdlib and pysource are never sealed)")
PLAIN_KINDS = ("builtin", "stdlib", "pysource")  # no ":" and nothing after the name
RUNTIME_KINDS = ("stdlib", "pysource")  # the interpreter's own files: never hidden, never sealed
KINDS = PLAIN_KINDS + ("text", "parquet", "hf")
DEFAULT_COLUMN = "text"  # parquet: and hf:
DEFAULT_REVISION = "main"  # hf:
DEFAULT_PATTERN = "*.parquet"  # hf:
HUB_DIR = "hub"  # downloads (hf:...) under the data root
_NOT_IN_COLUMN = "/*?[\\."  # a last ":PART" of parquet: holding one of these is part of the glob
_HF_NAME = re.compile(r"[\w.-]+/[\w.-]+")


@dataclass(frozen=True)
class Source:
    """A parsed data source spec. Fields that the kind does not have stay empty; defaults are filled in."""

    kind: str  # one of KINDS
    glob: str = ""  # text:, parquet: (as written: "~" is expanded when it is matched)
    column: str = ""  # parquet:, hf:
    repo: str = ""  # hf: OWNER/NAME
    revision: str = ""  # hf: branch, tag or commit
    pattern: str = ""  # hf: fnmatch pattern on the path in the repo

    @property
    def runtime(self) -> bool:
        """Whether the documents are the interpreter's own files (stdlib, pysource): never sealed."""
        return self.kind in RUNTIME_KINDS


def _bad(spec: str, why: str) -> UserError:
    return UserError(f"bad data source {spec!r}: {why}; use {SOURCE_GRAMMAR}")


def _parquet(spec: str, rest: str) -> Source:
    pattern, column = rest, DEFAULT_COLUMN
    if ":" in rest:
        head, tail = rest.rsplit(":", 1)
        if tail and not any(c in tail for c in _NOT_IN_COLUMN):
            pattern, column = head, tail
    if not pattern:
        raise _bad(spec, "the glob before :COLUMN is empty")
    return Source("parquet", glob=pattern, column=column)


def _hf(spec: str, rest: str) -> Source:
    parts = rest.split(":")
    if len(parts) > 3:
        raise _bad(spec, "more than three ':'-separated parts after hf:")
    name, at, revision = parts[0].partition("@")
    if not _HF_NAME.fullmatch(name):
        raise _bad(spec, f"the dataset {name!r} is not OWNER/NAME (letters, digits, '_', '-', '.')")
    if at and revision in ("", ".", ".."):
        raise _bad(spec, f"the revision after '@' is {'empty' if not revision else repr(revision)}")
    pattern = parts[1] if len(parts) > 1 and parts[1] else DEFAULT_PATTERN
    column = parts[2] if len(parts) > 2 and parts[2] else DEFAULT_COLUMN
    return Source("hf", repo=name, revision=revision or DEFAULT_REVISION, pattern=pattern, column=column)


def parse_source(spec: str) -> Source:
    """The Source a spec names, or a UserError that names the spec and gives SOURCE_GRAMMAR.

    Only the spec's form is checked here: whether a glob matches files, a column exists or a
    dataset is on the hub is found out when its documents are read."""
    if not isinstance(spec, str):
        raise UserError(f"data source {spec!r} is not a string; use {SOURCE_GRAMMAR}")
    kind, colon, rest = spec.partition(":")
    if kind not in KINDS:
        raise UserError(f"unknown data source {spec!r}; use {SOURCE_GRAMMAR}")
    if kind in PLAIN_KINDS:
        if colon:
            raise _bad(spec, f"{kind} takes nothing after its name")
        return Source(kind)
    if not rest:
        raise _bad(spec, f"{kind}: needs {'OWNER/NAME' if kind == 'hf' else 'a GLOB'} after the colon")
    if kind == "text":
        return Source("text", glob=rest)
    return _parquet(spec, rest) if kind == "parquet" else _hf(spec, rest)


# ---------------------------------------------------------------- documents and where they lie


def default_root() -> Path:
    """Where prepared datasets are cached: $EVO_DATA_DIR or ~/.cache/evo/data."""
    return Path(os.environ.get("EVO_DATA_DIR") or Path.home() / ".cache" / "evo" / "data")


def hub_cache(cache_dir: Path | None) -> Path:
    """The download folder of hf: sources: `cache_dir`, or the `hub` folder of the default data root."""
    return Path(cache_dir) if cache_dir else default_root() / HUB_DIR


def iter_documents(source: str, cache_dir: Path | None = None) -> Iterator[tuple[str, str]]:
    """Yield (name, text) for every document of a data source spec, as its source holds it
    (before chunking: see `gpt.chunking.documents`). `cache_dir` holds downloads (hf:...);
    default: the `hub` folder of the default data root."""
    from gpt import readers

    src = parse_source(source)
    if src.kind == "builtin":
        return readers.builtin_documents()
    if src.kind == "stdlib":
        return readers.stdlib_documents()
    if src.kind == "pysource":
        return readers.pysource_documents()
    if src.kind == "text":
        return readers.text_documents(src.glob)
    if src.kind == "parquet":
        return readers.parquet_documents(src.glob, src.column)
    from gpt import hub

    return hub.hf_documents(hub.HubSpec.of(src), hub_cache(cache_dir))


def minimal_dirs(paths: Iterable[str]) -> list[str]:
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
    src = parse_source(source)
    if src.runtime:
        return None
    if src.kind == "builtin":
        from gpt.readers import CORPUS_DIR

        return [os.path.realpath(CORPUS_DIR)]
    if src.kind == "hf":
        from gpt import hub

        return [os.path.realpath(hub.local_dir(hub_cache(cache_dir), hub.HubSpec.of(src)))]
    files = (p for p in glob.glob(os.path.expanduser(src.glob), recursive=True) if os.path.isfile(p))
    return minimal_dirs(os.path.dirname(os.path.realpath(p)) for p in files)
