"""`evo status` explains itself: each genome's state word, the crowning rule with the numbers that
decided for the latest candidate, Thresholdout's column and reveals, interrupted evaluations of a dead
controller, `--json` for scripts and `--watch` for a second terminal. Runs are synthetic (tests/synthetic.py)
with real journals; the CLI runs in-process (`evo.cli.main`) and as subprocesses."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from synthetic import add_child, fake, finish, new_run, replayed_state

from evo.cli import main

EVO_TINY = Path(__file__).resolve().parent / "genomes" / "evo_tiny.py"
SEED_VALS = (3.00, 3.02)  # seed mean 3.01, noise floor stdev = 0.0141 (1 degree of freedom)
JSON_KEYS = {"run_dir", "evaluations", "controller", "noise_floor", "seed", "best", "genomes", "latest_candidate",
             "thresholdout", "integrity", "sealed", "sandboxes", "flagged", "llm"}


def child(evolution, learning_rate: float, vals: tuple) -> str:
    """A child whose first evaluation gives vals[0] and, if it is a candidate, its re-evaluation vals[1]."""
    source = EVO_TINY.read_text().replace("LEARNING_RATE = 0.03", f"LEARNING_RATE = {learning_rate}")
    row = add_child(evolution, source, f"LEARNING_RATE 0.03 -> {learning_rate}")
    finish(evolution, row, fake(val=vals[0]))
    if len(vals) > 1:
        reeval = evolution.next_evaluation()
        assert (reeval.genome_id, reeval.purpose) == (row.genome_id, "reeval")
        finish(evolution, reeval, fake(val=vals[1]))
    return row.genome_id


def seeded_run(run_dir: Path):
    evolution = new_run(run_dir, EVO_TINY, str(run_dir / "no-dataset"), evals=20)
    for val in SEED_VALS:
        finish(evolution, evolution.next_evaluation(), fake(val=val))
    return evolution


def status_out(run_dir: Path, capsys, *flags) -> str:
    capsys.readouterr()
    assert main(["status", str(run_dir), *flags]) == 0
    return capsys.readouterr().out


def state_of(out: str, gid: str) -> str:
    """The state cell of a genome's row in the table."""
    row = next(line for line in out.splitlines() if line.startswith(f"│ {gid} "))
    return row.split("│")[2].strip()


def test_each_decision_is_explained_with_the_numbers_that_made_it(tmp_path, capsys):
    run_dir = tmp_path / "run"
    evolution = seeded_run(run_dir)
    seed = evolution.state.seed_ids[0]
    unconfirmed = child(evolution, 0.01, (2.80, 3.30))  # mean 3.05: within the noise of the seed's 3.01
    out = status_out(run_dir, capsys)
    assert state_of(out, unconfirmed) == "not confirmed" and state_of(out, seed) == "best"
    assert (f"latest candidate {unconfirmed}: mean 3.0500 bpb over 2 evaluations vs the best then, {seed}, "
            "3.0100 over 2 evaluations: P(better) = 0.144 from the difference -0.0400 over the noise floor 0.0141 "
            "(t, 1 dof), the child's mean shrunk toward what this run's children score (3.0100 ± 0.0141); "
            "crowned at P ≥ 0.95, given up at P < 0.5 or after 5 evaluations: not confirmed"
            ) in " ".join(out.split())

    confirmed = child(evolution, 0.02, (2.80, 2.82))  # mean 2.81: 0.20 better than the seed
    out = status_out(run_dir, capsys)
    assert state_of(out, confirmed) == "best (confirmed)" and state_of(out, seed) == "seed"
    assert (f"latest candidate {confirmed}: mean 2.8100 bpb over 2 evaluations vs the best then, {seed}, 3.0100 "
            "over 2 evaluations: P(better) = 0.969 from the difference +0.2000 over the noise floor 0.0141 (t, 1 dof), "
            "the child's mean shrunk toward what this run's children score (3.0100 ± 0.0141); "
            "crowned at P ≥ 0.95, given up at P < 0.5 or after 5 evaluations: confirmed (crowned)"
            ) in " ".join(out.split())
    assert "a child whose first evaluation gives P ≥ 0.8 is a candidate" in " ".join(out.split())

    best = child(evolution, 0.04, (2.50, 2.52))  # crowned over the first crowned child
    candidate = child(evolution, 0.05, (2.30,))  # its re-evaluation is queued
    out = status_out(run_dir, capsys)
    words = {gid: state_of(out, gid) for gid in (seed, unconfirmed, confirmed, best, candidate)}
    assert words == {seed: "seed", unconfirmed: "not confirmed", confirmed: "confirmed", best: "best (confirmed)",
                     candidate: "candidate (re-evaluation queued)"}
    assert (f"latest candidate {candidate}: mean 2.3000 bpb over 1 evaluation vs the best, {best}, 2.5100 over 2 "
            "evaluations: P(better) = 0.") in " ".join(out.split())
    assert "so it is re-evaluated (re-evaluation queued)" in " ".join(out.split())
    spent = evolution.state.thresholdout.state
    assert "held-out (Thresholdout)" in out
    assert f"Thresholdout: {spent.spent} of {spent.budget} reveals spent" in out
    assert "evaluations: 9 done of 20, 0 running, 1 queued" in out


def test_json_has_the_documented_keys_and_the_same_numbers(tmp_path, capsys):
    run_dir = tmp_path / "run"
    evolution = seeded_run(run_dir)
    unconfirmed = child(evolution, 0.01, (2.80, 3.30))
    confirmed = child(evolution, 0.02, (2.80, 2.82))
    candidate = child(evolution, 0.05, (2.60,))
    d = json.loads(status_out(run_dir, capsys, "--json"))
    assert set(d) == JSON_KEYS
    assert d["evaluations"] == {"done": 7, "limit": 20, "running": 0, "queued": 1, "interrupted": 0}
    assert d["noise_floor"] == pytest.approx(0.01414, abs=1e-5)
    assert d["best"]["genome"] == confirmed and d["best"]["n_evals"] == 2
    assert d["best"]["mean_val_bpb"] == pytest.approx(2.81) and d["best"]["gain_over_seed"] == pytest.approx(0.20)
    assert d["seed"] == {"genome": evolution.state.seed_ids[0], "mean_val_bpb": pytest.approx(3.01), "n_evals": 2,
                         "interval": [pytest.approx(3.01 - 12.706 * 0.014142 / 2 ** 0.5, abs=1e-3),
                                      pytest.approx(3.01 + 12.706 * 0.014142 / 2 ** 0.5, abs=1e-3)]}
    rows = {r["id"]: r for r in d["genomes"]}
    assert set(rows[candidate]) == {"id", "state", "detail", "fitness", "mean_val_bpb", "interval", "n_evals",
                                    "heldout_thresholdout", "operator", "parent"}
    lo, hi = rows[confirmed]["interval"]
    assert lo < rows[confirmed]["mean_val_bpb"] < hi and hi - lo == pytest.approx(2 * 12.706 * 0.014142 / 2 ** 0.5,
                                                                                   rel=1e-3)
    assert (rows[candidate]["state"], rows[candidate]["detail"]) == ("candidate", "re-evaluation queued")
    assert (rows[confirmed]["state"], rows[unconfirmed]["state"]) == ("best", "not confirmed")
    assert [r["fitness"] for r in d["genomes"]] == sorted((r["fitness"] for r in d["genomes"]), reverse=True)
    latest = d["latest_candidate"]
    assert (latest["genome"], latest["verdict"], latest["reeval"]) == (candidate, "pending", "queued")
    assert latest["difference"] == pytest.approx(0.21) and 0.8 < latest["p_better"] < 0.95  # pending: one more
    assert (latest["confidence"], latest["max_evals"], latest["floor_dof"]) == (0.95, 5, 1)
    assert latest["prior"] == [pytest.approx(3.01), pytest.approx(0.0002)]  # before five children: the seed
    state = replayed_state(run_dir)
    assert d["thresholdout"] == {"spent": state.thresholdout.state.spent, "budget": state.thresholdout.state.budget}
    assert d["llm"]["calls"] == 0 and d["flagged"] == {} and d["integrity"].startswith("integrity")
    assert len(json.loads(status_out(run_dir, capsys, "--json", "--top", "2"))["genomes"]) == 2


def files_of(folder: Path) -> dict:
    return {p.relative_to(folder): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def test_evaluations_left_running_by_a_dead_controller_are_shown_as_interrupted(tmp_path, capsys, evo_cli):
    run_dir = tmp_path / "run"
    evolution = seeded_run(run_dir)
    candidate = child(evolution, 0.05, (2.60,))
    evolution.journal.mark_running(evolution.next_evaluation().id, "cpu0")  # its re-evaluation, in a slot

    evolution.journal.set_meta("controller", {"pid": os.getpid(), "host": socket.gethostname(), "since": 0.0})
    out = status_out(run_dir, capsys)
    assert "evaluations: 3 done of 20, 1 running, 0 queued" in out and "interrupted" not in out
    assert state_of(out, candidate) == "candidate (re-evaluation running)"

    evolution.journal.set_meta("controller", {"pid": dead_pid(), "host": socket.gethostname(), "since": 0.0})
    out = status_out(run_dir, capsys)
    assert (f"evaluations: 3 done of 20, 1 interrupted (the controller is gone; `evo resume {run_dir}` re-runs "
            "them), 0 queued") in " ".join(out.split())
    assert state_of(out, candidate) == "candidate (re-evaluation interrupted)"
    d = json.loads(status_out(run_dir, capsys, "--json"))
    assert d["evaluations"]["interrupted"] == 1 and d["evaluations"]["running"] == 0
    assert d["controller"]["alive"] is False

    # the same through the command line, with the operators, the LLM package, openai and libcst unimportable;
    # status reads the run and writes nothing into it
    evolution.journal.close()
    before = files_of(run_dir)
    proc = evo_cli("status", run_dir, cwd=tmp_path, bare=True)
    assert proc.returncode == 0, proc.stderr
    assert files_of(run_dir) == before
    assert f"1 interrupted (the controller is gone; `evo resume {run_dir}` re-runs them)" in proc.stdout
    assert "candidate (re-evaluation interrupted)" in proc.stdout and "held-out (Thresholdout)" in proc.stdout
    assert f"latest candidate {candidate}: mean 2.6000 bpb over 1 evaluation" in proc.stdout
    assert "Thresholdout: 0 of " in proc.stdout or "Thresholdout: 1 of " in proc.stdout


def test_watch_redraws_while_another_process_drives_the_run_and_exits_0_on_ctrl_c(tmp_path, data_env):
    run_dir = tmp_path / "run"
    evolution = seeded_run(run_dir)
    candidate = child(evolution, 0.05, (2.60,))
    proc = subprocess.Popen([sys.executable, "-m", "evo.cli", "status", str(run_dir), "--watch", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=data_env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()

    def wait_for(text: str, times: int = 1) -> None:
        deadline = time.time() + 120
        while sum(text in line for line in list(lines)) < times:
            assert proc.poll() is None and time.time() < deadline, (proc.poll(), lines[-20:])
            time.sleep(0.05)

    try:
        wait_for("evaluations: 3 done of 20, 0 running, 1 queued", times=2)
        # this process finishes the re-evaluation while the watcher reads: the next frames show it
        finish(evolution, evolution.next_evaluation(), fake(val=2.62))
        wait_for("evaluations: 4 done of 20, 0 running, 0 queued")
        wait_for("best (confirmed)")
    finally:
        proc.send_signal(signal.SIGINT)
        returncode = proc.wait(timeout=60)
        reader.join(timeout=10)
    assert returncode == 0, proc.stderr.read()
    assert sum("Ctrl-C stops" in line for line in lines) >= 3
    assert any(line.startswith(f"│ {candidate} │ best (confirmed)") for line in lines)


def test_watch_needs_a_positive_interval_and_a_run(tmp_path, capsys):
    seeded_run(tmp_path / "run").journal.close()
    assert main(["status", str(tmp_path / "run"), "--watch", "0"]) == 2
    assert "--watch needs a positive number of seconds" in capsys.readouterr().err
    assert main(["status", str(tmp_path / "elsewhere"), "--watch", "1"]) == 2, "a wrong RUN_DIR fails at once"
    assert "is not a run directory" in capsys.readouterr().err
