"""Sealed eval data: no document of val, heldout or test is readable from inside the genome's sandbox.

The attack test plays an attacker who knows which corpus evo uses (the built-in one is public)
and searches every file it can read in the sandbox for text of the eval documents: by path
(the archive next to `gpt.lab`), through the interpreter's own search (`importlib`, `linecache`,
`__pycache__`), and by walking the whole file system, compressed files included.
"""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gpt import sandbox
from gpt.runner import SlotJob, run_slot
from gpt.sealing import seal

needs_bwrap = pytest.mark.skipif("bwrap" not in sandbox.available_levels(),
                                 reason=f"bubblewrap is not usable here: {sandbox.probe('bwrap')[1]}")
SNIPPETS = 120
SNIPPET_CHARS = 64


def eval_snippets(dataset, n: int = SNIPPETS, chars: int = SNIPPET_CHARS, seed: int = 0) -> list[str]:
    """Distinctive pieces of the eval documents: mostly letters, no markup-only lines."""
    rng = np.random.default_rng(seed)
    tok = dataset.tokenizer
    out = []
    for split in ("val", "heldout", "test"):
        text = tok.decode(np.asarray(dataset.text_tokens(split))[:400_000])
        tries = 0
        while len(out) < n * (1 + ("val", "heldout", "test").index(split)) // 3 and tries < 10_000:
            tries += 1
            start = int(rng.integers(0, len(text) - chars))
            piece = text[start:start + chars]
            if "\n" not in piece and sum(c.isalpha() for c in piece) > 0.7 * chars:
                out.append(piece)
    return out


def test_the_default_corpus_is_sealed_under_bwrap_and_only_there(default_dataset):
    assert seal(default_dataset, "bwrap").sealed
    assert Path(default_dataset.manifest["document_roots"][0]) in seal(default_dataset, "bwrap").hidden
    for level in ("netns", "none"):
        verdict = seal(default_dataset, level)
        assert not verdict.sealed and "bubblewrap" in verdict.why


def test_the_interpreters_own_library_can_never_be_sealed(stdlib_only_manifest):
    verdict = seal(stdlib_only_manifest, "bwrap")
    assert not verdict.sealed and "must be able to import" in verdict.why


def test_a_corpus_folder_that_also_holds_the_runtime_cannot_be_sealed(tmp_path):
    venv_parent = Path(sandbox.python_dirs()[-1]).parent

    class Manifest:
        manifest = {"source": f"text:{venv_parent}/**/*.txt", "document_roots": [str(venv_parent)]}

    verdict = seal(Manifest(), "bwrap")
    assert not verdict.sealed and "also holds the genome's runtime" in verdict.why


@pytest.fixture
def stdlib_only_manifest():
    class Manifest:
        manifest = {"source": "stdlib", "document_roots": None}

    return Manifest()


ATTACK = """
import bz2, gzip, importlib.util, json, linecache, lzma, os, sys
import numpy as np
SNIPPETS = [s.encode() for s in {snippets!r}]
found, opened, scanned = [], {{}}, 0
import gpt
here = os.path.dirname(gpt.__file__)
for name in ("corpus/python-docs-3.11.tar.xz", "corpus"):
    p = os.path.join(here, name)
    opened[name] = sorted(os.listdir(p)) if os.path.isdir(p) else os.path.exists(p)
spec = importlib.util.find_spec("gpt.corpus")
opened["find_spec"] = str(spec)
opened["linecache"] = len(linecache.getlines(os.path.join(here, "corpus", "README.md")))

# A fast exact search for 120 snippets in 2 GB: every occurrence of a snippet (>= 15 bytes) covers an
# 8-aligned 8-byte word of the file equal to one of the snippet's 8 words at offsets 0..7. So look the
# file's aligned words up in a hashed bitmap of those words, then confirm each candidate with `in`.
WORDS = {{}}
for i, s in enumerate(SNIPPETS):
    for k in range(8):
        WORDS.setdefault(int.from_bytes(s[k:k + 8], "little"), set()).add(i)
MULT, BITS = np.uint64(0x9E3779B97F4A7C15), 22
def bucket_of(words):
    return (words * MULT) >> np.uint64(64 - BITS)
TABLE = np.zeros(1 << BITS, dtype=bool)
TABLE[bucket_of(np.array(list(WORDS), dtype=np.uint64))] = True

def check(path, data):
    words = np.frombuffer(data, dtype="<u8", count=len(data) // 8)
    candidates = set()
    for word in np.unique(words[TABLE[bucket_of(words)]]).tolist():
        candidates |= WORDS.get(word, set())
    for i in sorted(candidates):
        if SNIPPETS[i] in data:
            found.append([path, SNIPPETS[i].decode()])

own = os.getcwd()  # its own work dir holds this source, snippets and all
for top in ("/",):
    for folder, dirs, files in os.walk(top):
        if folder in ("/proc", "/sys", "/dev", own):
            dirs[:] = []
            continue
        for name in files:
            path = os.path.join(folder, name)
            try:
                if os.path.islink(path) or os.path.getsize(path) > 8 * 2**20:
                    continue
                with open(path, "rb") as f:
                    if f.read(4) == b"\\x7fELF":
                        continue
                    f.seek(0)
                    data = f.read()
            except OSError:
                continue
            scanned += 1
            for opener in (gzip.decompress, lzma.decompress, bz2.decompress):
                try:
                    data = data + opener(data)
                    break
                except Exception:
                    pass
            check(path, data)
print("REDTEAM " + json.dumps({{"found": found, "opened": opened, "scanned": scanned}}), flush=True)
"""


@needs_bwrap
@pytest.mark.slow
def test_an_attacker_who_searches_every_readable_file_finds_no_eval_document_of_the_default_corpus(
        default_dataset, tmp_path):
    snippets = eval_snippets(default_dataset)
    assert len(snippets) == SNIPPETS
    genome = tmp_path / "attack.py"
    genome.write_text(textwrap.dedent(ATTACK.format(snippets=snippets)))
    out = tmp_path / "slot"
    run_slot(SlotJob(genome=str(genome), dataset=str(default_dataset.path), out_dir=str(out), budget_s=300,
                     grace_s=60, sandbox="bwrap", static_checks=False))
    stdout = (out / "stdout.txt").read_text()
    line = next(x for x in stdout.splitlines() if x.startswith("REDTEAM "))
    report = json.loads(line[len("REDTEAM "):])
    print(f"scanned {report['scanned']} readable files; opened: {report['opened']}")
    assert report["scanned"] > 1000  # it really searched
    assert report["opened"]["corpus/python-docs-3.11.tar.xz"] is False
    assert report["opened"]["corpus"] == []  # the folder is an empty tmpfs
    # No eval document is readable as such. What the search does find are single lines the documentation shares
    # with the interpreter's own files (docstrings, code examples), which every genome must be able to read:
    # measured, bounded, and documented in docs/integrity.md as the residual of the built-in corpus.
    hits = {snippet for _, snippet in report["found"]}
    places = {path for path, _ in report["found"]}
    print(f"{len(hits)} of {len(snippets)} eval snippets occur in readable files: {sorted(places)[:10]}")
    assert not [p for p in places if "/corpus" in p or p.startswith("/usr/share/doc") or "pydoc_data" in p], places
    assert len(hits) <= 0.2 * len(snippets)


def test_the_attack_finds_the_snippets_where_they_are_readable(default_dataset, tmp_path):
    """The search itself works: run outside the sandbox, on a folder holding eval text at every byte
    offset modulo 8 (the fast search looks up aligned words), one copy gzipped."""
    import gzip

    snippets = eval_snippets(default_dataset, n=3)
    folder = tmp_path / "plain"
    folder.mkdir()
    for offset in range(8):
        (folder / f"copy{offset}.txt").write_text("x" * offset + snippets[offset % 3] + " suffix")
    (folder / "packed.gz").write_bytes(gzip.compress(("prefix " + snippets[1]).encode()))
    source = textwrap.dedent(ATTACK.format(snippets=snippets)).replace('for top in ("/",)', f"for top in ({str(folder)!r},)")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, env=env, timeout=120)
    report = json.loads(proc.stdout.split("REDTEAM ", 1)[1])
    found = {(Path(path).name, snippet) for path, snippet in report["found"]}
    assert found == {(f"copy{k}.txt", snippets[k % 3]) for k in range(8)} | {("packed.gz", snippets[1])}, found


def test_evo_run_refuses_an_unsealable_source_and_writes_nothing(evo_cli, tmp_path):
    genome = Path(__file__).resolve().parents[1] / "genomes" / "tiny_cpu.py"
    proc = evo_cli("run", "--data", "stdlib", "--genome", genome, "--out", tmp_path / "run", "--evals", 1,
                   cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cannot be sealed" in proc.stderr and "--allow-unsealed" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_evo_eval_refuses_it_too_and_says_why(evo_cli, tmp_path):
    genome = Path(__file__).resolve().parents[1] / "genomes" / "tiny_cpu.py"
    proc = evo_cli("eval", genome, "--data", "pysource", "--budget", 1, "--out", tmp_path / "ev", cwd=tmp_path)
    assert proc.returncode == 2 and "interpreter's own library" in proc.stderr, proc.stderr
    assert not (tmp_path / "ev").exists()


def test_evo_eval_rejects_a_budget_that_is_not_positive(evo_cli, tmp_path):
    genome = Path(__file__).resolve().parents[1] / "genomes" / "tiny_cpu.py"
    for budget in (0, -5):
        proc = evo_cli("eval", genome, "--budget", budget, cwd=tmp_path)
        # the same rule as `evo run`: the config schema's minimum for budget_s
        assert proc.returncode == 2 and f"--budget {budget}" in proc.stderr and "must be >= 0.5" in proc.stderr, \
            proc.stderr
        assert "Traceback" not in proc.stderr


def test_a_weaker_level_is_refused_for_sealing_and_when_allowed_names_what_it_does_not_protect(default_dataset,
                                                                                             capsys):
    from evo.commands import integrity_check
    from gpt.errors import UserError
    from gpt.sealing import describe

    with pytest.raises(UserError, match="cannot be sealed.*--allow-unsealed"):
        integrity_check(default_dataset, "none", allow_unsealed=False)
    info = integrity_check(default_dataset, "none", allow_unsealed=True)
    err = capsys.readouterr().err
    assert "does not give file-system isolation" in err and "network isolation" in err and "UNSEALED" in err
    assert info["sandbox"] == "none" and info["sealed"] is False and len(info["unprotected"]) == 3
    line = describe(info)
    assert "sandbox none" in line and "UNSEALED" in line and "no network isolation" in line


@needs_bwrap
def test_under_bwrap_the_default_corpus_runs_sealed_with_no_warning(default_dataset, capsys):
    from evo.commands import integrity_check
    from gpt.sealing import describe

    info = integrity_check(default_dataset, "bwrap", allow_unsealed=False)
    assert info == {"sandbox": "bwrap", "sealed": True, "unsealed_why": None, "unprotected": []}
    assert "warning" not in capsys.readouterr().err
    assert describe(info) == "integrity: sandbox bwrap, eval data sealed"

