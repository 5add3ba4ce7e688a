"""A run with LLM operators, stopped and resumed, continues exactly as the uninterrupted run: the same
children in the same order from the same operators and models, with the same scores. Everything random
that a resume needs (operator and parent choice, knob steps, which model answers) comes from streams fixed
by the run seed and the proposal number, and the LLM client's state (spend, which model made which child,
the bandit's rewards) is journaled."""
from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from llm_server import LLMServer, answer, prompt_text

STEPS = Path(__file__).resolve().parent / "genomes" / "evo_steps.py"
LR = re.compile(r"^(LEARNING_RATE\s*=\s*)([0-9.eE+-]+)(.*)$", re.M)
EVALS, FIRST_SESSION = 6, 3


def deterministic_answer(request: dict):
    """The same request gets the same edit whatever came before (unlike a cycling answer), so two runs
    that ask the same model the same thing get the same child."""
    found = LR.search(str(request["messages"][-1].get("content", ""))) or LR.search(prompt_text(request))
    if not found:
        return answer("What worked: nothing yet. Try LEARNING_RATE.")
    digest = hashlib.sha256(f"{request.get('model')}:{found.group(0)}".encode()).digest()
    factor = (0.5, 0.7, 1.4, 2.0)[digest[0] % 4]
    new_line = f"{found.group(1)}{float(found.group(2)) * factor:.4g}{found.group(3)}"
    return answer(f"IDEA: scale LEARNING_RATE by {factor}\nRATIONALE: ({request.get('model')})\n\n"
                  f"<<<<<<< SEARCH\n{found.group(0)}\n=======\n{new_line}\n>>>>>>> REPLACE\n")


def _config(path: Path, base_url: str, source: str, out: Path) -> Path:
    path.write_text(f"""
[run]
preset = "smoke"
genomes = ["{STEPS}"]
data = "{source}"
allow_unsealed = true
seed = 5
evals = {EVALS}
out = "{out}"
[slots]
slots = 1
budget_s = 10.0
grace_s = 60.0
eval_tokens = 2048
contended_share = 0.0
[fitness]
noise_repeats = 2
max_candidate_evals = 2  # a candidate takes at most one re-evaluation: 6 evaluations hold children of both kinds
[llm]
share = 0.6
crossover_rate = 0.3
summary_every = 3
backoff_s = 0.05
[[llm.models]]
model = "model-a"
base_url = "{base_url}"
api_key_env = ""
weight = 1.0
[[llm.models]]
model = "model-b"
base_url = "{base_url}"
api_key_env = ""
weight = 2.0
""")
    return path


def _evo(*args, env) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "evo.cli", *map(str, args), "--quiet"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _history(run_dir: Path) -> dict:
    db = sqlite3.connect(run_dir / "journal.sqlite")
    done = db.execute("SELECT e.genome_id, e.purpose, e.seed, e.status, e.val_bpb, g.operator, g.parents "
                      "FROM evaluations e JOIN genomes g ON g.id = e.genome_id "
                      "WHERE e.state = 'done' AND e.purpose != 'export' ORDER BY e.done_seq").fetchall()
    origins = {}
    for (data,) in db.execute("SELECT data FROM events WHERE kind = 'llm_origin' ORDER BY id"):
        event = json.loads(data)
        origins[event["genome_id"]] = event["model"]
    evaluated = {row[0] for row in done}
    return {"done": done, "models": {g: m for g, m in origins.items() if g in evaluated}}


@pytest.mark.slow
def test_a_stopped_and_resumed_llm_run_continues_exactly_as_the_uninterrupted_run(tmp_path, small_source, data_env):
    with LLMServer(default=deterministic_answer) as server:
        whole = _config(tmp_path / "whole.toml", server.base_url, small_source, tmp_path / "whole")
        _evo("run", "--config", whole, env=data_env)
        split = _config(tmp_path / "split.toml", server.base_url, small_source, tmp_path / "split")
        _evo("run", "--config", split, "--evals", FIRST_SESSION, env=data_env)
        _evo("resume", tmp_path / "split", "--evals", EVALS, env=data_env)

    uninterrupted, resumed = _history(tmp_path / "whole"), _history(tmp_path / "split")
    assert len(uninterrupted["done"]) == EVALS
    operators = {row[5] for row in uninterrupted["done"]}
    offline = {"gp", "tpe", "cmaes", "knob_mutation", "knob_crossover"}  # the knob operators
    assert {"llm_mutation"} <= operators and operators & offline, operators
    assert resumed["done"] == uninterrupted["done"]
    assert resumed["models"] == uninterrupted["models"]
