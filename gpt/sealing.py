"""Sealing: can a genome read any evaluation document at a given sandbox level?

A split is sealed when no document of val, heldout or test can be read from inside the
genome's sandbox, by any path. Only bwrap builds the genome's file system from scratch, so
only bwrap can seal: at `netns` and `none` the genome reads whatever the harness user reads.
Under bwrap the folders holding a corpus's documents (`Dataset.document_roots`, e.g. the
built-in corpus in `gpt/corpus`) are covered by an empty tmpfs. A corpus cannot be sealed
when its documents are the runtime a genome must import (`stdlib`, `pysource`) or when a
folder of it holds part of that runtime (a `text:` glob over the whole home directory that
also holds the venv, say).

Copies elsewhere in the sandbox's view: the genome must be able to read its runtime (the Python
prefixes and site-packages, the system's Python libraries). `runtime_overlap` measures which
share of the eval documents' lines also occur in those files' text; above MAX_RUNTIME_OVERLAP
the corpus is a copy of what the genome can read, and is not sealed (a corpus cut from the
stdlib's own modules, say). The measurement takes seconds and is cached next to the dataset.
A copy in a file outside the runtime (a license text in some package's LICENSE) is not looked
for; `tests/test_sealing.py` searches every readable file of the sandbox for text of the
default corpus's eval documents, as an attacker would.
"""
from __future__ import annotations

import glob
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpt import sandbox

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
MAX_RUNTIME_OVERLAP = 0.10  # share of eval lines (40+ characters) also in the runtime's text: above, not sealed
MIN_LINE = 40
TEXT_SUFFIXES = (".py", ".pyi", ".txt", ".md", ".rst", ".cfg", ".toml", ".json", ".html")
OVERLAP_CACHE = "seal_overlap.json"


@dataclass(frozen=True)
class Seal:
    """The verdict for one dataset at one level: sealed or not, why, and what the sandbox must hide."""

    sealed: bool
    why: str
    hidden: tuple[Path, ...] = ()

    def describe(self) -> str:
        return "sealed" if self.sealed else f"UNSEALED ({self.why})"


def _runtime_dirs() -> list[Path]:
    """What the genome's sandbox binds for its runtime: system folders, the Python prefixes, `gpt`."""
    return [Path(d) for d in SYSTEM_DIRS if Path(d).exists()] + sandbox.python_dirs()


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def seal(dataset, level: str) -> Seal:
    """Whether `dataset`'s eval documents are out of a genome's reach at sandbox `level`."""
    roots = dataset.manifest.get("document_roots")
    source = dataset.manifest.get("source")
    if roots is None:
        return Seal(False, f"the {source!r} corpus is the interpreter's own library, which every genome must be "
                           "able to import; use --data builtin (the default), text:, parquet: or hf:")
    roots = [Path(r).resolve() for r in roots]
    runtime = [d.resolve() for d in _runtime_dirs()]
    for root in roots:
        holds = [d for d in runtime if _within(d, root)]
        if holds:
            return Seal(False, f"the corpus folder {root} also holds the genome's runtime ({holds[0]}), so it "
                               "cannot be hidden; move the corpus into a folder of its own")
    if level != "bwrap":
        return Seal(False, f"at sandbox level {level!r} the genome reads every file the harness user can, the eval "
                           "splits and the corpus included; install bubblewrap for level bwrap",
                    tuple(r for r in roots if r.is_dir()))
    overlap = runtime_overlap(dataset)
    if overlap > MAX_RUNTIME_OVERLAP:
        return Seal(False, f"{overlap:.0%} of the eval documents' lines also occur in files the genome must be able "
                           "to read (the interpreter's own library and packages): the corpus copies the runtime",
                    tuple(r for r in roots if r.is_dir()))
    return Seal(True, "", tuple(r for r in roots if r.is_dir()))


def _norm(line: str) -> str:
    return " ".join(line.split())


def runtime_dirs_for_text() -> list[str]:
    """Folders of text a genome can read and cannot be denied: the Python prefixes (with site-packages)
    and the system's Python libraries."""
    dirs = [str(d) for d in sandbox.python_dirs()] + sorted(glob.glob("/usr/lib/python3*"))
    return sorted(set(dirs))


def runtime_overlap(dataset) -> float:
    """Share of the eval documents' long lines (MIN_LINE+ characters, whitespace folded) that also occur
    in the runtime's text files. Cached in the dataset folder per interpreter."""
    key = {"python": sys.version, "dirs": runtime_dirs_for_text(), "hidden": sandbox.unseen_docs()}
    cache = Path(dataset.path) / OVERLAP_CACHE
    try:
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return float(saved["overlap"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    tok = dataset.tokenizer
    eval_lines = set()
    for split in ("val", "heldout", "test"):
        text = tok.decode(np.asarray(dataset.text_tokens(split)))
        eval_lines.update(n for n in (_norm(line) for line in text.splitlines()) if len(n) >= MIN_LINE)
    if not eval_lines:
        return 0.0
    found = set()
    for root in key["dirs"]:
        for folder, subdirs, files in os.walk(root):
            subdirs[:] = [d for d in subdirs if os.path.join(folder, d) not in key["hidden"]]  # empty in the sandbox
            for name in files:
                if not name.endswith(TEXT_SUFFIXES):
                    continue
                try:
                    with open(os.path.join(folder, name), encoding="utf-8", errors="ignore") as f:
                        text = f.read(2**20)
                except OSError:
                    continue
                for line in text.splitlines():
                    if len(line) >= MIN_LINE:
                        n = _norm(line)
                        if n in eval_lines:
                            found.add(n)
    overlap = len(found) / len(eval_lines)
    try:
        cache.write_text(json.dumps({"key": key, "overlap": overlap, "eval_lines": len(eval_lines)}))
    except OSError:
        pass  # a read-only data cache: measured again next time
    return overlap


def unprotected(level: str) -> list[str]:
    """What a level weaker than bwrap leaves open (docs/integrity.md has the full table)."""
    if level == "bwrap":
        return []
    gaps = ["file-system isolation: the genome reads and writes what the harness user can (eval splits, other "
            "slots' artifacts, the harness code)"]
    if level == "none":
        gaps += ["network isolation", "a PID namespace: the genome can signal the harness's processes"]
    return gaps


def describe(info: dict | None) -> str:
    """One line from a run's journaled integrity record: sandbox level, sealed or not, what is open."""
    if not info:
        return "integrity: unknown (a run made before the sandbox level was journaled)"
    seal_word = "sealed" if info.get("sealed") else f"UNSEALED ({info.get('unsealed_why')})"
    weak = f"; weaker than bwrap, no {'; no '.join(info['unprotected'])}" if info.get("unprotected") else ""
    return f"integrity: sandbox {info.get('sandbox')}, eval data {seal_word}{weak}"
