"""Shared fixtures: a small text dataset built in seconds, and the default (builtin) dataset.

Both live in session temporary folders, so the suite never reads or writes the user's
cache (~/.cache/evo/data) and a CI machine starts from nothing.
"""
from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GENOMES = Path(__file__).resolve().parent / "genomes"

# Larger eval fractions than the defaults, so that a ~400 KB corpus still gives every
# eval split tens of kilobytes (the floor is gpt.data.MIN_EVAL_TOKENS = 4096 bytes).
SMALL_FRACTIONS = {"val": 0.1, "heldout": 0.1, "test": 0.1}
SMALL_CORPUS_BYTES = 400_000
DOC_BYTES = 2000
DUPLICATED_DOC = "doc_0000.txt"  # the fixture also writes an exact copy of it
# The small dataset's secret: fixed, so that a test can prepare the same dataset again (same
# key, same splits, same files) in another root. The default dataset has a random one.
SMALL_SECRET = "00" * 16


def corpus_documents(total_bytes: int = SMALL_CORPUS_BYTES, doc_bytes: int = DOC_BYTES) -> list[str]:
    """Deterministic, varied, unique documents: the first lines of many stdlib modules,
    cut on line boundaries into ~`doc_bytes` pieces (at most two pieces per module)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    seen: set[str] = set()
    size = 0
    for path in sorted(stdlib.glob("*.py")):
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines(keepends=True)
        piece: list[str] = []
        pieces = 0
        for line in lines:
            piece.append(line)
            if sum(len(x) for x in piece) >= doc_bytes:
                text = "".join(piece)
                piece = []
                if text not in seen:
                    seen.add(text)
                    docs.append(text)
                    size += len(text.encode("utf-8"))
                    pieces += 1
                if pieces == 2 or size >= total_bytes:
                    break
        if size >= total_bytes:
            return docs
    raise RuntimeError(f"the stdlib at {stdlib} gave only {size} bytes of documents")


def write_corpus(folder: Path, docs: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(docs):
        (folder / f"doc_{i:04d}.txt").write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def small_docs() -> list[str]:
    """The unique documents of the small corpus (the duplicate file is not in this list)."""
    return corpus_documents()


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory, small_docs) -> Path:
    """A folder of ~200 .txt documents (~400 KB) plus one exact duplicate of doc_0000.txt."""
    folder = write_corpus(tmp_path_factory.mktemp("corpus"), small_docs)
    (folder / "copy_of_doc_0000.txt").write_bytes((folder / DUPLICATED_DOC).read_bytes())
    return folder


@pytest.fixture(scope="session")
def small_source(small_corpus) -> str:
    return f"text:{small_corpus}/*.txt"


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory, small_source):
    """The small corpus prepared into a session tmp root with SMALL_SECRET (about a second)."""
    from gpt.data import prepare

    return prepare(small_source, root=tmp_path_factory.mktemp("small-data"), fractions=SMALL_FRACTIONS,
                   secret=SMALL_SECRET)


@pytest.fixture(scope="session")
def stdlib_data_root(tmp_path_factory) -> Path:
    """A session-private EVO_DATA_DIR, the default dataset's root (the name is from when that
    was the stdlib): subprocesses get it through `data_env`."""
    return tmp_path_factory.mktemp("evo-data")


@pytest.fixture(scope="session")
def default_dataset(stdlib_data_root):
    """The default dataset, `prepare()` with no arguments (builtin source, default fractions,
    a random secret), made hermetic by pointing EVO_DATA_DIR at a session folder while it runs
    (under a second). A later `prepare()` with that EVO_DATA_DIR (a subprocess with `data_env`)
    finds this dataset: the cache key does not depend on a random secret."""
    from gpt.data import prepare

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVO_DATA_DIR", str(stdlib_data_root))
        dataset = prepare()
    assert dataset.path.parent == stdlib_data_root
    return dataset


@pytest.fixture(scope="session")
def stdlib_dataset(default_dataset):
    """The default dataset under its old name (it was the stdlib source): other test files use it."""
    return default_dataset


@pytest.fixture(scope="session")
def data_env(stdlib_data_root) -> dict:
    """Environment for `evo` / genome subprocesses: the caller's, with EVO_DATA_DIR pointing
    at the session dataset root so `prepare()` in the child reuses `default_dataset`."""
    env = dict(os.environ, EVO_DATA_DIR=str(stdlib_data_root), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable


# ---------------------------------------------------------------- evolution runs (test_evolution, test_resume)
EVO_TINY = GENOMES / "evo_tiny.py"


@pytest.fixture(scope="session")
def evo_tiny() -> Path:
    """A byte bigram genome with knobs: exports in well under a second, learns within a 2 s budget."""
    return EVO_TINY


@pytest.fixture(scope="session")
def evo_steps() -> Path:
    """A bigram genome that stops after a fixed number of single-thread steps: with a budget of a few
    seconds its val_bpb depends on the harness seed only, not on how busy the machine is."""
    return GENOMES / "evo_steps.py"


@pytest.fixture(scope="session")
def evo_cli(data_env, python):
    """`evo ARGS...` as a real subprocess with the session dataset root (and wide, unwrapped rich output);
    returns the CompletedProcess."""
    import subprocess

    def run(*args, timeout: float = 300, cwd=None, env: dict | None = None, bare: bool = False):
        """`bare`: with openai, libcst, evo.llm and evo.operators unimportable (tests/bare_evo.py)."""
        entry = [str(Path(__file__).resolve().parent / "bare_evo.py")] if bare else ["-m", "evo.cli"]
        return subprocess.run([python, *entry, *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, cwd=cwd, env={**data_env, "COLUMNS": "200", **(env or {})})

    return run
