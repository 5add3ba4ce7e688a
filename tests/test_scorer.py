"""The scorer kept between jobs (gpt.scorer): real runner, real sandboxed scorer processes.

One scorer process serves consecutive slots of one shape; what it answers for an artifact does not
depend on what it scored before (the same numbers a fresh scorer gives); a scorer that died, or
whose scratch is gone, is never used again; the artifact is back in its work dir after scoring, a
plain file with one link; a slot of another shape gets a scorer of its own.
"""
from __future__ import annotations

import os
import signal
import time

import pytest

from gpt import sandbox, scorer as scorers
from gpt.runner import SlotJob
from test_runner import slot


@pytest.fixture(autouse=True)
def no_idle_scorers():
    scorers.discard_idle()
    yield
    scorers.discard_idle()


def _idle_pids() -> list[int]:
    return [s.proc.pid for s in scorers._IDLE]


def _comparable(result) -> tuple:
    return (result.status, result.val_bpb, result.heldout_bpb, result.scored_tokens, result.probes)


def test_consecutive_slots_share_one_scorer_that_answers_as_a_fresh_one(small_dataset, tmp_path):
    first = slot("evo_steps.py", small_dataset, tmp_path / "a", budget_s=2.0)
    (pid,) = _idle_pids()
    second = slot("evo_tiny.py", small_dataset, tmp_path / "b", budget_s=2.0)
    assert (first.status, second.status) == ("ok", "ok"), (first.detail, second.detail)
    assert _idle_pids() == [pid] and scorers._IDLE[0].jobs == 2  # the second slot paid no scorer start
    for out in (tmp_path / "a", tmp_path / "b"):  # each artifact went back where the genome wrote it
        for name in ("program.json", "weights.safetensors"):
            st = os.lstat(out / "work" / name)
            assert st.st_nlink == 1 and os.path.isfile(out / "work" / name)
        assert not any(p.name.startswith(".scorer-") for p in out.iterdir())
    # the same artifact, the same probe seed: the kept scorer (after another artifact) and a fresh one agree
    job = SlotJob(genome="", dataset=str(small_dataset.path), out_dir=str(tmp_path / "a"), budget_s=2.0,
                  threads=1, eval_tokens=2048, eval_seq_len=64)
    level = sandbox.resolve_level("auto")
    request = {"dataset": job.dataset, "seq_len": 64, "eval_tokens": 2048, "device": "cpu", "threads": 1,
               "probe_seed": 12345}
    kept = scorers.take(job, level, tmp_path)
    assert kept.proc.pid == pid
    fresh = scorers.Scorer(job, level, tmp_path)
    try:
        again = kept.score(request, tmp_path / "b" / "work")
        assert again.ok
        assert _comparable(kept.score(request, tmp_path / "a" / "work")) == \
            _comparable(fresh.score(request, tmp_path / "a" / "work"))
    finally:
        fresh.close()
        kept.close()


def test_a_dead_scorer_or_one_whose_scratch_is_gone_is_replaced(small_dataset, tmp_path):
    slot("evo_steps.py", small_dataset, tmp_path / "a", budget_s=2.0)
    (dead,) = scorers._IDLE
    os.kill(dead.proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while dead.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    second = slot("evo_steps.py", small_dataset, tmp_path / "b", budget_s=2.0)
    assert second.ok, second.detail  # a new scorer, not a crash
    (new,) = scorers._IDLE
    assert new.proc.pid != dead.proc.pid and not dead.scratch.exists()
    import shutil

    shutil.rmtree(new.scratch)  # e.g. a worker's scratch folder removed under it
    third = slot("evo_steps.py", small_dataset, tmp_path / "c", budget_s=2.0)
    assert third.ok, third.detail
    assert _idle_pids() != [new.proc.pid] and new.proc.poll() is not None  # ended, not reused


def _kept_scorer_after_one_slot(small_dataset, tmp_path):
    """The scorer slot `a` kept, taken for a request of its shape, and that request."""
    first = slot("evo_steps.py", small_dataset, tmp_path / "a", budget_s=2.0)
    (kept,) = scorers._IDLE
    job = SlotJob(genome="", dataset=str(small_dataset.path), out_dir=str(tmp_path / "a"), budget_s=2.0,
                  threads=1, eval_tokens=2048, eval_seq_len=64)
    assert scorers.take(job, sandbox.resolve_level("auto"), tmp_path) is kept and first.ok
    return kept, {"dataset": job.dataset, "seq_len": 64, "eval_tokens": 2048, "device": "cpu", "threads": 1,
                  "probe_seed": 1}


def test_a_scorer_that_dies_while_scoring_fails_that_slot_only(small_dataset, tmp_path):
    kept, request = _kept_scorer_after_one_slot(small_dataset, tmp_path)
    kept.proc.stdin.write("not a request\n")  # its main loop dies on it, as on a crash mid-request
    kept.proc.stdin.flush()
    broken = kept.score(request, tmp_path / "a" / "work")
    assert broken.status == "failed" and broken.reason == "score_error", broken
    assert kept.proc.poll() is not None and not kept.scratch.exists()  # ended, its scratch removed
    assert (tmp_path / "a" / "work" / "weights.safetensors").is_file()  # the artifact came back
    scorers.give_back(kept)  # a dead one is not kept
    assert scorers._IDLE == []
    assert slot("evo_steps.py", small_dataset, tmp_path / "b", budget_s=2.0).ok


def test_a_scorer_whose_answers_are_out_of_step_is_ended(small_dataset, tmp_path):
    """A line that is not the answer to the request just sent (here one already waiting when the request goes
    out, as after a stray print: well-formed, but for another artifact, or for none) means the scorer's answers
    no longer match its requests: that slot fails, and the scorer is ended, never sent the next artifact."""
    for k, stray in enumerate(['{"status": "great"}', '{"status": "ok", "val_bpb": 0.5, "artifact": "/elsewhere"}',
                               '{"status": "ok", "val_bpb": 0.5}']):
        kept, request = _kept_scorer_after_one_slot(small_dataset, tmp_path / str(k))
        kept._answers.put(stray + "\n")
        out_of_step = kept.score(request, tmp_path / str(k) / "a" / "work")
        assert out_of_step.reason == "score_error" and "unreadable scorer output" in out_of_step.detail, stray
        assert kept.proc.poll() is not None and not kept.scratch.exists()
        scorers.give_back(kept)
        assert scorers._IDLE == []


def test_an_idle_scorer_ends_after_its_idle_time_without_another_job(small_dataset, tmp_path, monkeypatch):
    """A worker whose run ended (no job takes its scorer) does not keep the scorer's memory until it exits."""
    monkeypatch.setattr(scorers, "IDLE_S", 1.5)
    slot("evo_steps.py", small_dataset, tmp_path / "a", budget_s=2.0)
    (kept,) = scorers._IDLE
    assert kept.proc.poll() is None
    deadline = time.monotonic() + 30
    while kept.scratch.exists() and time.monotonic() < deadline:  # close() removes it last
        time.sleep(0.1)
    assert kept.proc.poll() is not None and scorers._IDLE == [] and not kept.scratch.exists()


def test_a_scorer_taken_again_is_not_ended_by_the_timer_of_its_earlier_idle_time(small_dataset, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setattr(scorers, "IDLE_S", 4.0)
    slot("evo_steps.py", small_dataset, tmp_path / "a", budget_s=2.0)  # given back: timer 1 starts
    (kept,) = scorers._IDLE
    time.sleep(2.0)
    slot("evo_steps.py", small_dataset, tmp_path / "b", budget_s=2.0)  # taken, given back: timer 2 starts
    assert scorers._IDLE == [kept]
    time.sleep(max(0.0, kept.idle_since + 4.0 - time.monotonic() - 1.0))  # past timer 1, before timer 2
    assert kept.proc.poll() is None and scorers._IDLE == [kept]


def test_slots_of_another_shape_get_their_own_scorer_and_idle_ones_are_capped(small_dataset, tmp_path):
    slot("evo_steps.py", small_dataset, tmp_path / "a", budget_s=2.0)
    slot("evo_steps.py", small_dataset, tmp_path / "b", budget_s=2.0, threads=2)
    assert len(set(_idle_pids())) == 2  # one per shape (threads differ)
    slot("evo_steps.py", small_dataset, tmp_path / "c", budget_s=2.0, eval_tokens=1024)  # same shape as a
    assert len(scorers._IDLE) == 2
    oldest = scorers._IDLE[0]
    slot("evo_steps.py", small_dataset, tmp_path / "d", budget_s=2.0, memory_mb=3000)  # a third shape
    assert len(scorers._IDLE) == scorers.MAX_IDLE and oldest not in scorers._IDLE and oldest.proc.poll() is not None


def test_a_test_score_gets_a_scorer_of_its_own_that_is_not_kept(small_dataset, tmp_path):
    """`evo export` scores the test split: no kept scorer may hold test text in its memory afterwards."""
    slot("evo_steps.py", small_dataset, tmp_path / "a", budget_s=2.0)
    (kept,) = scorers._IDLE
    exported = slot("evo_steps.py", small_dataset, tmp_path / "b", budget_s=2.0, test=True)
    assert exported.ok and exported.test_bpb is not None, exported.detail
    assert scorers._IDLE == [kept] and kept.jobs == 1  # the kept one did not score the test split


def test_an_artifact_that_cannot_be_handed_over_fails_as_that_and_leaves_the_scorer_usable(small_dataset, tmp_path,
                                                                                           monkeypatch):
    """A full disk while the artifact is copied into the scorer's scratch (another file system) is not
    the scorer running out of memory: the slot fails naming the copy, and the scorer, sent nothing, serves on."""
    import errno

    kept, request = _kept_scorer_after_one_slot(small_dataset, tmp_path)

    def cross_device(*_):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def disk_full(*_, **__):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(scorers.os, "rename", cross_device)
        patch.setattr(scorers.shutil, "copyfile", disk_full)
        refused = kept.score(request, tmp_path / "a" / "work")
    assert refused.status == "failed" and refused.reason == "score_error", refused
    assert "could not be handed to the scorer" in refused.detail and "No space left" in refused.detail
    assert kept.proc.poll() is None and (tmp_path / "a" / "work" / "weights.safetensors").is_file()
    try:
        assert kept.score(request, tmp_path / "a" / "work").ok  # the same scorer answers the next request
    finally:
        kept.close()
