"""Genome ids: computed once from a normalization evo owns, stored in the journal, the same under every
Python version evo supports (a run resumed under another interpreter still knows its genomes)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from evo.genome import Genome, genome_id
from evo.journal import Journal

REPO = Path(__file__).resolve().parents[1]
# Pinned: if one of these changes, every journaled id stops matching the genomes evo makes from then on.
GOLDEN = {
    "x = 1\n": "e391b2be9e7c",
    "def f(a, *, b=2):\n    return a + b  # c\n": "8927f1a26361",
    "genomes/tiny_cpu.py": "42d70141baa6",
    "genomes/nanochat_gpu.py": "0c77cc7de789",
    "tests/genomes/evo_steps.py": "053366692154",
}
OTHER_PYTHONS = sorted(Path.home().glob(".pyenv/versions/3.1[0-9]*/bin/python3"))


def _source(key: str) -> str:
    return (REPO / key).read_text() if key.endswith(".py") else key


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_genome_ids_are_pinned(key):
    assert genome_id(_source(key)) == GOLDEN[key]


def test_formatting_and_comments_do_not_change_the_id_but_a_constant_does():
    base = _source("genomes/tiny_cpu.py")
    assert genome_id("# a new comment\n" + base.replace(" = ", "  =  ")) == genome_id(base)
    assert genome_id(base.replace("\nimport ", "\n\n\nimport ")) == genome_id(base)  # blank lines
    changed = base.replace("LEARNING_RATE = ", "LEARNING_RATE = 2 * ", 1)
    assert changed != base and genome_id(changed) != genome_id(base)
    assert genome_id("x = 1\n") != genome_id("x = True\n") != genome_id("x = 1.0\n")


@pytest.mark.skipif(not OTHER_PYTHONS, reason="no other Python versions under ~/.pyenv")
@pytest.mark.parametrize("python", OTHER_PYTHONS, ids=lambda p: p.parent.parent.name)
def test_another_python_version_gives_the_same_ids(python):
    script = ("import json, sys; sys.path.insert(0, sys.argv[1]); from evo.genome import genome_id; "
              "print(json.dumps({k: genome_id(v) for k, v in json.loads(sys.stdin.read()).items()}))")
    sources = {k: _source(k) for k in GOLDEN}
    proc = subprocess.run([str(python), "-c", script, str(REPO)], input=json.dumps(sources), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == GOLDEN


def test_the_journal_keeps_the_id_it_was_given_and_never_recomputes_it(tmp_path):
    journal = Journal(tmp_path / "journal.sqlite")
    legacy = Genome(source="x = 1\n", id="0123456789ab")  # e.g. made by an older evo with another hash
    journal.add_genome(legacy)
    assert journal.genome("0123456789ab").id == "0123456789ab"
    assert journal.genome_ids() == ["0123456789ab"]
    journal.close()
