"""Crash safety: `evo run` killed with SIGKILL at arbitrary moments, then `evo resume` until done.

The journal must end with exactly `evals` finished evaluations, none counted twice, every result
finished before a kill unchanged, and the scores a clean replay of the journal gives (Thresholdout
draws included): a resumed run is the run it would have been.
"""
from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evo import config as cfg
from evo.state import RunState
from evo.journal import Journal

EVALS = 4   # 2 noise evaluations of the seed, then children (and re-evaluations)
BUDGET = 5  # seconds; evo_steps stops after its fixed steps well before
# contended_share = 0: a re-run of a starved slot would make the sequence depend on the machine's load
TOML = "[slots]\ngrace_s = 60.0\neval_tokens = 1024\ncontended_share = 0.0\n"
SESSION_TIMEOUT = 300
COMPARED = ("genome_id", "purpose", "seed", "state", "attempt", "done_seq", "finished", "status", "reason", "val_bpb",
            "heldout_bpb", "answer", "revealed", "penalty", "fitness", "result")


# ---------------------------------------------------------------- watching and killing a controller
def evaluations(journal_path: Path) -> list[dict]:
    """The evaluations table, read through a separate read-only connection (as another process would)."""
    if not journal_path.exists():
        return []
    for _ in range(50):
        try:
            db = sqlite3.connect(f"file:{journal_path}?mode=ro", uri=True, timeout=5)
            db.row_factory = sqlite3.Row
            try:
                return [dict(r) for r in db.execute("SELECT * FROM evaluations ORDER BY id")]
            finally:
                db.close()
        except sqlite3.OperationalError:  # the file exists but the schema is not committed yet
            time.sleep(0.05)
    raise AssertionError(f"cannot read {journal_path}")


def done(rows) -> list[dict]:
    return [r for r in rows if r["state"] == "done" and r["purpose"] != "export"]


def wait_until(condition, proc: subprocess.Popen, log: Path, what: str, timeout: float = SESSION_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"the controller exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def _ppids() -> dict[int, int]:
    ppids = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppids[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return ppids


def descendants(pid: int) -> set[int]:
    ppids = _ppids()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in ppids.items() if pp in frontier} - found
        found |= frontier
    return found


def processes_under(root: Path) -> set[int]:
    """Processes whose working directory or command line is inside `root` (orphaned slot processes)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(str(root)) or str(root) in cmdline:
            pids.add(int(entry.name))
    return pids


def crash(proc: subprocess.Popen, root: Path) -> None:
    """SIGKILL the controller, as a power cut or the OOM killer would; then the slot processes it left.

    It is frozen first (SIGSTOP runs none of its code) so that the process tree read next is complete."""
    os.kill(proc.pid, signal.SIGSTOP)
    tree = descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    for _ in range(100):
        leftovers = (tree | processes_under(root)) & set(_ppids())
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not processes_under(root):
            return
        time.sleep(0.1)
    raise AssertionError(f"processes under {root} survive SIGKILL: {processes_under(root)}")


# ---------------------------------------------------------------- the test
@pytest.mark.slow
def test_a_run_killed_at_random_moments_resumes_to_exactly_the_evaluations_it_would_have_done(
        tmp_path, data_env, evo_steps, small_source):
    rng = random.Random()
    root, run_dir = tmp_path, tmp_path / "run"
    journal_path = run_dir / "journal.sqlite"
    (root / "run.toml").write_text(TOML)
    env = {**data_env, "COLUMNS": "200"}
    evo = [sys.executable, "-m", "evo.cli"]
    run_cmd = evo + ["run", "--preset", "smoke", "--config", str(root / "run.toml"), "--genome", str(evo_steps),
                     "--data", small_source, "--allow-unsealed", "--budget", str(BUDGET), "--evals", str(EVALS), "--hours", "0",
                     "--seed", "2", "--out", str(run_dir), "--quiet"]
    resume_cmd = evo + ["resume", str(run_dir), "--quiet"]
    sessions: list[str] = []
    finished_before_kills: dict[int, dict] = {}

    def start(cmd) -> tuple[subprocess.Popen, Path]:
        log = root / f"session-{len(sessions)}.log"
        sessions.append(f"{cmd[3]} -> {log.name}")
        return subprocess.Popen(cmd, cwd=root, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT), log

    def kill_and_record(proc, note: str) -> None:
        crash(proc, root)
        sessions[-1] += f": {note}"
        rows = evaluations(journal_path)
        for r in done(rows):
            finished_before_kills.setdefault(r["id"], r)

    # 1. during the first noise evaluation
    proc, log = start(run_cmd)
    wait_until(lambda: any(r["state"] == "running" for r in evaluations(journal_path)), proc, log,
               "the first evaluation started")
    delay = rng.uniform(0.2, 3.0)
    time.sleep(delay)
    kill_and_record(proc, f"killed {delay:.2f} s into the first evaluation")
    assert len(done(evaluations(journal_path))) <= 1, sessions

    # 2. mid-run, while a slot runs a child (the noise floor is known)
    proc, log = start(resume_cmd)
    wait_until(lambda: (lambda rows: len(done(rows)) >= 2 and any(r["state"] == "running" for r in rows))(
        evaluations(journal_path)), proc, log, "a slot running after the noise evaluations")
    delay = rng.uniform(0.2, 2.0)
    time.sleep(delay)
    kill_and_record(proc, f"killed {delay:.2f} s into a running slot")

    # 3. right after an evaluation finished (the follow-ups may be half done)
    before = len(done(evaluations(journal_path)))
    if before < EVALS:
        proc, log = start(resume_cmd)
        wait_until(lambda: len(done(evaluations(journal_path))) > before, proc, log, "an evaluation finished")
        kill_and_record(proc, "killed as soon as an evaluation was journaled")

    # 4. resume until done, then once more (a finished run starts nothing)
    for _ in range(2):
        proc, log = start(resume_cmd)
        rc = proc.wait(SESSION_TIMEOUT)
        assert rc == 0, f"{sessions}\n{log.read_text()[-3000:]}"
    assert f"evaluations:        {EVALS}" in log.read_text()
    assert processes_under(root) == set(), "a finished run left processes behind"

    rows = evaluations(journal_path)
    finished = done(rows)
    context = f"sessions: {sessions}"
    assert len(finished) == EVALS, context
    assert {r["purpose"] for r in finished} <= {"noise", "child", "reeval"}
    assert sorted(r["done_seq"] for r in finished) == list(range(1, EVALS + 1)), context
    assert not [r for r in rows if r["state"] == "running"], context
    pairs = [(r["genome_id"], r["seed"]) for r in finished]
    assert len(pairs) == len(set(pairs)), f"an evaluation was done twice: {pairs}"
    by_id = {r["id"]: r for r in rows}
    for eval_id, before_kill in finished_before_kills.items():
        after = by_id[eval_id]
        assert {k: after[k] for k in COMPARED} == {k: before_kill[k] for k in COMPARED}, \
            f"evaluation {eval_id} changed after a resume ({context})"
    for r in finished:  # the journaled result is the one its (last) attempt wrote
        on_disk = json.loads((run_dir / "evals" / f"{r['id']:05d}-{r['attempt']}" / "result.json").read_text())
        assert (on_disk["status"], on_disk.get("val_bpb")) == (r["status"], r["val_bpb"]), r["id"]

    journal = Journal(journal_path)
    requeued = [i for e in journal.events("resumed") for i in e["requeued"]]
    assert len(journal.events("resumed")) == len(sessions) - 1
    assert requeued, f"no kill caught a running evaluation ({context})"
    for eval_id in requeued:
        assert by_id[eval_id]["attempt"] >= 2 or by_id[eval_id]["state"] == "queued"

    # the scores journaled across the kills are exactly what one clean replay of the journal gives
    clean = RunState(cfg.RunConfig.from_dict(journal.get_meta("config")), journal)
    for row in journal.done_evaluations():
        scores, _ = clean.fold(row, row.result)
        assert (scores.get("answer"), scores.get("revealed"), scores.get("penalty"), scores.get("fitness")) == \
            (row.answer, row.revealed, row.penalty, row.fitness), f"evaluation {row.id} ({context})"
    journal.close()
