"""End to end: `evo run` with an LLM model served by a real OpenAI-compatible server on 127.0.0.1."""
from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from llm_server import LLMServer, lr_edit_answer

TINY = Path(__file__).resolve().parent / "genomes" / "evo_tiny.py"
SECRET = "sk-evo-test-7f3a9c1e5b2d"


def _run_config(path: Path, base_url: str, source: str, out: Path, evals: int = 5) -> Path:
    path.write_text(f"""
[run]
preset = "smoke"
genomes = ["{TINY}"]
data = "{source}"
allow_unsealed = true  # the fixture corpus is cut from the stdlib
evals = {evals}
out = "{out}"
[slots]
budget_s = 1.0
eval_tokens = 4096
contended_share = 0.0
[fitness]
noise_repeats = 2
max_candidate_evals = 2  # a lucky first child takes at most one re-evaluation: a second child is proposed
[llm]
share = 1.0
crossover_rate = 0.0
summary_every = 0
backoff_s = 0.05
[[llm.models]]
model = "test-model"
base_url = "{base_url}"
api_key_env = "EVO_TEST_LLM_KEY"
price_in_per_m = 3.0
price_out_per_m = 15.0
timeout_s = 20
""")
    return path


@pytest.mark.slow
def test_evo_run_with_llm_model_evaluates_llm_children_and_keeps_secrets(tmp_path, small_source, data_env):
    out = tmp_path / "run"
    with LLMServer(default=lr_edit_answer) as server:
        config = _run_config(tmp_path / "run.toml", server.base_url, small_source, out)
        env = dict(data_env, EVO_TEST_LLM_KEY=SECRET)
        proc = subprocess.run([sys.executable, "-m", "evo.cli", "run", "--config", str(config), "--quiet"],
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        served = list(server.served_usage)
        prompts = server.prompts()

    db = sqlite3.connect(out / "journal.sqlite")
    done = db.execute("SELECT COUNT(*) FROM evaluations WHERE state = 'done' AND purpose != 'export'").fetchone()[0]
    assert done == 5
    llm_children = db.execute(
        "SELECT COUNT(*) FROM evaluations e JOIN genomes g ON g.id = e.genome_id "
        "WHERE e.state = 'done' AND g.operator = 'llm_mutation'").fetchone()[0]
    assert llm_children >= 1
    child_source = db.execute("SELECT source FROM genomes WHERE operator = 'llm_mutation'").fetchone()[0]
    assert "LEARNING_RATE = 0.03\n" not in child_source and "LEARNING_RATE" in child_source

    # cost accounting matches the usage the server sent and the configured prices
    calls = db.execute("SELECT SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_usd) FROM llm_calls "
                       "WHERE status = 'ok'").fetchone()
    assert calls[0] == sum(u["prompt_tokens"] for u in served)
    assert calls[1] == sum(u["completion_tokens"] for u in served)
    assert calls[2] == pytest.approx((calls[0] * 3.0 + calls[1] * 15.0) / 1e6)

    # the mutation prompt states the regime: the slot's budget and hardware, the train corpus
    text = "\n".join(prompts)
    assert "training budget per slot: 1 s of wall clock on cpu" in text
    assert "corpus: text, tokenizer byte (vocabulary 256)" in text and "train tokens in" in text
    # ... the parent's throughput, the knob study of its structure, the history against the parent
    assert "steps per train second" in text and "Knob study of this structure" in text
    assert "space: WIDTH: one of 8, 16, 32; SEQ_LEN: one of 32, 64" in text and "best: val_bpb " in text
    assert "val_bpb vs parent | evals | status" in text

    # no held-out or test value, and no Thresholdout answer, ever reached a prompt
    heldouts = [h for (h,) in db.execute("SELECT heldout_bpb FROM evaluations WHERE heldout_bpb IS NOT NULL")]
    assert heldouts
    vals = [v for (v,) in db.execute("SELECT val_bpb FROM evaluations WHERE val_bpb IS NOT NULL")]
    text = "\n".join(prompts)
    for value in heldouts:
        for digits in (3, 4):  # as a whole number in the text (3.971 is not a piece of 3.9719), unless a val
            shown = f"{value:.{digits}f}"  # value shows the same at this precision
            if shown not in {f"{v:.{digits}f}" for v in vals}:
                assert not re.search(rf"(?<![\d.]){re.escape(shown)}(?!\d)", text), shown
    assert "heldout" not in text.lower() and "held-out bpb" not in text.lower()

    # the key is in no file of the run directory (journal included) and in no genome's environment
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    status = subprocess.run([sys.executable, "-m", "evo.cli", "status", str(out)], env=data_env,
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    assert "LLM:" in status.stdout and "calls" in status.stdout


def test_missing_key_variable_is_a_clear_error_before_any_slot(tmp_path, small_source, data_env):
    out = tmp_path / "run"
    config = _run_config(tmp_path / "run.toml", "http://127.0.0.1:9/v1", small_source, out)
    env = {k: v for k, v in data_env.items() if k != "EVO_TEST_LLM_KEY"}
    proc = subprocess.run([sys.executable, "-m", "evo.cli", "run", "--config", str(config)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "EVO_TEST_LLM_KEY" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
