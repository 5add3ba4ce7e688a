"""Warm slots (gpt.warm): the next genome's interpreter starts near a slot's end (bwrap) or while it is scored.

Real runner, real sandboxed processes: the second slot of a shape starts warm (its torch import was
done before its clock started) in a process of its own with an empty work dir; a slot of another
shape starts cold; a warm slot whose process died is not used; nothing is left running.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from pathlib import Path

import pytest

from gpt import sandbox, warm
from test_runner import slot


def _found(out) -> list:
    line = next(l for l in (out / "stdout.txt").read_text().splitlines() if l.startswith("found:"))
    return json.loads(line.split(":", 1)[1])


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _staged(warm_dir) -> list:
    return sorted(p.name for p in warm_dir.iterdir()) if warm_dir.exists() else []


def test_the_second_slot_starts_warm_in_a_fresh_process_and_an_empty_work_dir(small_dataset, tmp_path):
    warm_dir = tmp_path / "warm"
    first = slot("work_dir_listing.py", small_dataset, tmp_path / "a", warm_dir=str(warm_dir), budget_s=2.0)
    assert len(_staged(warm_dir)) == 1  # the next slot's interpreter, started while `first` was scored
    staged = next(iter(warm._READY.values()))[0]
    assert staged.genome.clock.ready.wait(120)  # as after a real slot's seconds of scoring: its imports are done
    second = slot("work_dir_listing.py", small_dataset, tmp_path / "b", warm_dir=str(warm_dir), budget_s=2.0)
    try:
        assert (first.status, second.status) == ("ok", "ok"), (first.detail, second.detail)
        assert (first.warm, second.warm) == (False, True)
        assert second.pid == staged.genome.proc.pid != first.pid and not _alive(first.pid) and not _alive(second.pid)
        # torch was imported before the second one's clock started
        assert second.startup_seconds < first.startup_seconds - 0.3, (first.startup_seconds, second.startup_seconds)
        # nothing of the genome before: the same work dir a cold start has (torch's imports may make a cache dir)
        assert _found(tmp_path / "a") == _found(tmp_path / "b")
        assert "genome.py" in _found(tmp_path / "b") and "left_behind.txt" not in _found(tmp_path / "b")
        # the warm slot's files became the slot's own: the same layout a cold slot has
        assert sorted(os.listdir(tmp_path / "b")) == sorted(os.listdir(tmp_path / "a"))
        assert (tmp_path / "b" / "work" / "left_behind.txt").is_file()
        again = warm._READY[next(iter(warm._READY))][0]  # the one started while `second` was scored
        pids = (again.genome.proc.pid,)
    finally:
        warm.discard_all()
    assert _staged(warm_dir) == [] and not any(_alive(p) for p in pids)


def test_a_slot_of_another_shape_or_a_dead_warm_process_starts_cold(small_dataset, tmp_path):
    warm_dir = tmp_path / "warm"
    try:
        slot("work_dir_listing.py", small_dataset, tmp_path / "a", warm_dir=str(warm_dir), budget_s=2.0)
        other = slot("work_dir_listing.py", small_dataset, tmp_path / "b", warm_dir=str(warm_dir), budget_s=2.0,
                     threads=2)  # another shape: the warm slot for one thread is not used
        assert other.ok and other.warm is False
        ready = warm._READY[next(k for k in warm._READY if k[5] == 2)][0]
        os.kill(ready.genome.proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while ready.genome.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        third = slot("work_dir_listing.py", small_dataset, tmp_path / "c", warm_dir=str(warm_dir), budget_s=2.0,
                     threads=2)
        assert third.ok and third.warm is False  # its warm slot had died: a cold start, not a crash
    finally:
        warm.discard_all()
    assert _staged(warm_dir) == []


def test_stages_a_killed_controller_left_are_swept_when_the_next_one_is_prepared(small_dataset, tmp_path):
    warm_dir = tmp_path / "warm"
    (warm_dir / "0123456789ab" / "work").mkdir(parents=True)  # what a controller killed mid-run leaves
    (warm_dir / "0123456789ab" / "work" / "genome.py").write_text("print('stale')\n")
    try:
        result = slot("work_dir_listing.py", small_dataset, tmp_path / "a", warm_dir=str(warm_dir), budget_s=2.0)
        assert result.ok
        (staged,) = _staged(warm_dir)
        assert staged != "0123456789ab" and warm_dir / staged == next(iter(warm._READY.values()))[0].stage
    finally:
        warm.discard_all()
    assert _staged(warm_dir) == []


def test_without_a_warm_dir_nothing_is_started_ahead(small_dataset, tmp_path):
    result = slot("work_dir_listing.py", small_dataset, tmp_path / "a", budget_s=2.0)
    assert result.ok and result.warm is False and warm._READY == {}


def test_a_run_warms_gpu_slots_and_cpu_slots_that_leave_cores_idle_but_never_past_its_last_evaluation(tmp_path):
    from evo.slots import Slot, SlotPool
    from tests.synthetic import new_run

    seed = Path(__file__).resolve().parent / "genomes" / "evo_tiny.py"
    cores = os.cpu_count() or 1
    every_core, spare = Slot("cpu0", "cpu", cores), Slot("cpu0", "cpu", max(1, cores - 1))
    gpu, remote = Slot("gpu0", "cuda", 0, {"CUDA_VISIBLE_DEVICES": "0"}), Slot("w/cpu", "cpu", 1, worker="tcp://w")
    cases = [("auto", [every_core], every_core, False), ("auto", [gpu], gpu, True), ("auto", [remote], remote, False),
             ("on", [every_core], every_core, True), ("off", [gpu], gpu, False)]
    if cores > 1:
        cases.append(("auto", [spare], spare, True))
    for k, (mode, slots, slot, expected) in enumerate(cases):
        evolution = new_run(tmp_path / f"run{k}", seed, warm=mode, evals=8)
        evolution.pool = SlotPool(slots)
        assert evolution._warms(slot) is expected, (mode, slot)
    last = new_run(tmp_path / "last", seed, warm="on", evals=1)  # this evaluation is the run's last one
    assert last._warms(gpu) is False


def test_a_cancelled_job_warms_no_next_slot_and_scores_nothing(small_dataset, tmp_path):
    """A job the controller gave up (gpt.worker's cancel watch calls stop_slots_run_by) ends at once:
    no next slot is started behind it (no next job is coming), and its result says it was cancelled."""
    import threading

    from gpt.training import _LIVE_SLOTS, stop_slots_run_by

    warm_dir = tmp_path / "warm"
    results = []
    job = threading.Thread(target=lambda: results.append(slot(
        "loops_forever.py", small_dataset, tmp_path / "a", unchecked=True, warm_dir=str(warm_dir), budget_s=300.0)))
    job.start()
    deadline = time.monotonic() + 120
    while not any(g.run_by == job.ident for g in list(_LIVE_SLOTS.values())) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2)  # past `go`: the genome sleeps on its 300 s budget
    stop_slots_run_by(job.ident)
    job.join(60)
    try:
        assert not job.is_alive() and results, "the cancelled job did not end"
        assert (results[0].status, results[0].reason) == ("failed", "cancelled"), results[0].detail
        assert warm._READY == {} and _staged(warm_dir) == []
    finally:
        warm.discard_all()


needs_bwrap = pytest.mark.skipif("bwrap" not in sandbox.available_levels(),
                                 reason="bwrap is not usable here (make test installs it where it can)")


@needs_bwrap
def test_under_bwrap_the_next_interpreter_starts_before_this_genome_ends_and_is_ready_for_scoring(small_dataset,
                                                                                                   tmp_path):
    """In its own namespaces the next interpreter imports during this genome's last seconds, so the
    imports neither wait for its death nor share the cores with its scoring."""
    warm_dir = tmp_path / "warm"
    try:
        first = slot("evo_tiny.py", small_dataset, tmp_path / "a", warm_dir=str(warm_dir), budget_s=6.0,
                     sandbox="bwrap")
        returned = time.monotonic()
        staged = next(iter(warm._READY.values()))[0]
        assert first.ok and first.sandbox == "bwrap", first.detail
        genome_exit = returned - first.eval_seconds  # the scoring began after the genome had exited
        assert staged.genome.spawned_at < genome_exit - first.export_seconds - 0.5, \
            (staged.genome.spawned_at, genome_exit)
        second = slot("evo_tiny.py", small_dataset, tmp_path / "b", warm_dir=str(warm_dir), budget_s=6.0,
                      sandbox="bwrap")
        assert second.ok and second.warm is True and second.pid == staged.genome.proc.pid != first.pid
        assert not _alive(first.pid) and not _alive(second.pid)
    finally:
        warm.discard_all()
    assert _staged(warm_dir) == []


def test_only_bwrap_starts_the_next_interpreter_while_a_genome_runs(tmp_path):
    """A weaker sandbox shares a PID or mount namespace between slots: the next waits for the genome's death."""
    from gpt.job import SlotJob

    job = SlotJob(genome="g.py", dataset=str(tmp_path), out_dir=str(tmp_path / "o"), budget_s=30.0,
                  warm_dir=str(tmp_path / "warm"))
    at = warm.early_start(job, "bwrap")
    assert at is not None and 15.0 <= at < 30.0
    assert warm.early_start(job, "netns") is None and warm.early_start(job, "none") is None
    assert warm.early_start(dataclasses.replace(job, warm_dir=""), "bwrap") is None
    assert warm.early_start(dataclasses.replace(job, budget_s=2.0), "bwrap") == 1.0  # never before half the budget
