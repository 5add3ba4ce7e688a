"""The slot runner with real genome subprocesses: the clock, failure reasons, cleanup, environment.

The fixture genomes live in tests/genomes/ and use the genome contract (`from gpt import lab`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import GENOMES, REPO
from gpt import result as R
from gpt.result import SlotResult
from gpt.runner import SlotJob, run_slot

SECRET = "sk-test-secret"


def slot(genome: str, dataset, out: Path, unchecked: bool = False, **overrides) -> SlotResult:
    """Run one slot of a fixture genome on the small dataset, with small budgets and one thread.

    The grace is generous: a slot ends when its genome exits, and on a busy two-core machine
    importing torch and tearing it down can take longer than the default 10 s of grace.

    `unchecked`: skip the runner's static source checks where it has them. Genomes that
    start processes or read os.environ are rejected by those checks before they run; the
    tests that use them are about what the runner enforces at run time."""
    kwargs = dict(genome=str(GENOMES / genome), dataset=str(dataset.path), out_dir=str(out), budget_s=5.0,
                  grace_s=30.0, threads=1, eval_tokens=2048, eval_seq_len=64)
    if unchecked and "static_checks" in {f.name for f in dataclasses.fields(SlotJob)}:
        kwargs["static_checks"] = False
    kwargs.update(overrides)
    result = run_slot(SlotJob(**kwargs))
    written = json.loads((out / "result.json").read_text())
    assert written == result.to_dict() and SlotResult.from_dict(written) == result
    return result


def processes_with(marker: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker in cmdline and state not in ("Z", "X"):
            found.append(int(entry))
    return found


# ---------------------------------------------------------------- the clock and cleanup


def test_a_genome_that_ignores_the_clock_is_killed_at_budget_plus_grace_with_its_children(small_dataset, tmp_path):
    budget, grace = 2.0, 2.0
    start = time.monotonic()
    result = slot("loops_forever.py", small_dataset, tmp_path, unchecked=True, budget_s=budget, grace_s=grace)
    elapsed = time.monotonic() - start
    assert (result.status, result.reason) == ("failed", "timeout")
    assert budget + grace - 0.1 <= result.train_seconds <= budget + grace + 5
    assert elapsed < budget + grace + 15  # the whole slot, scorer start and shutdown included
    children = json.loads((tmp_path / "work" / "children.json").read_text())  # they did start
    marker = children["marker"]
    deadline = time.monotonic() + 3
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with(marker) == [], f"left running: {children}"


# ---------------------------------------------------------------- failure reasons


def test_a_genome_that_raises_fails_with_crash_and_its_traceback(small_dataset, tmp_path):
    result = slot("raises.py", small_dataset, tmp_path)
    assert (result.status, result.reason) == ("failed", "crash")
    assert result.returncode != 0
    assert "RuntimeError: genome exploded on purpose" in result.stderr_tail


def test_a_genome_that_never_submits_fails_with_no_submit(small_dataset, tmp_path):
    result = slot("no_submit.py", small_dataset, tmp_path)
    assert (result.status, result.reason) == ("failed", "no_submit")
    assert result.returncode == 0
    assert "forgot to submit" in result.stderr_tail


@pytest.mark.parametrize("genome, says", [
    ("data_dependent_branch.py", "avoid Python control flow on tensor values"),
    ("submits_a_dict.py", "submit() needs a torch.nn.Module, got dict"),
])
def test_a_model_that_cannot_be_exported_fails_with_export_error(small_dataset, tmp_path, genome, says):
    result = slot(genome, small_dataset, tmp_path)
    assert (result.status, result.reason) == ("failed", "export_error")
    assert says in result.detail
    assert says in result.stderr_tail
    assert not (tmp_path / "work" / "program.json").exists()


# ---------------------------------------------------------------- environment, and a slot that succeeds


def test_api_keys_of_the_caller_never_reach_the_genome_and_an_honest_slot_is_scored(small_dataset, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("EVO_TEST_PARENT_ONLY", "1")
    result = slot("dump_env.py", small_dataset, tmp_path, unchecked=True, budget_s=3.0)
    environ = json.loads((tmp_path / "work" / "environ.json").read_text())
    assert "EVO_SLOT_SPEC" in environ and environ["HOME"]  # the dump is the genome's real environment
    assert "OPENAI_API_KEY" not in environ and "EVO_TEST_PARENT_ONLY" not in environ
    assert not any(SECRET in key or SECRET in value for key, value in environ.items())
    # the same slot, scored: a bigram model trained on train is honest on every probe
    assert (result.status, result.reason) == ("ok", None), result
    assert (result.causality, result.canary, result.stateless) == ("pass", "pass", "pass")
    assert math.isfinite(result.val_bpb) and 2.0 < result.val_bpb < 8.5
    assert result.steps is not None and result.steps >= 5  # parsed from its `steps:` line
    assert result.stderr_tail == ""


# ---------------------------------------------------------------- the seed genome, end to end


@pytest.mark.slow
def test_evo_eval_of_the_seed_genome_ends_ok(stdlib_dataset, data_env, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "evo.cli", "eval", "genomes/tiny_cpu.py", "--budget", "5",
                           "--out", str(tmp_path / "slot")], cwd=REPO, env=data_env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert re.search(r"^status:\s+ok$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^val_bpb:\s+\d+\.\d+$", proc.stdout, re.M)
    result = json.loads((tmp_path / "slot" / "result.json").read_text())
    assert result["status"] == "ok" and result["val_bpb"] < 8.0


@pytest.mark.slow
def test_the_seed_genome_run_by_hand_prints_its_val_bpb(stdlib_dataset, data_env, tmp_path):
    env = dict(data_env, EVO_BUDGET="3", TMPDIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "genomes/tiny_cpu.py"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = re.search(r"^val_bpb:\s+(\d+\.\d+)$", proc.stdout, re.M)
    assert match, proc.stdout + proc.stderr[-3000:]
    assert 0.5 < float(match.group(1)) < 8.0


# ---------------------------------------------------------------- the result schema (no process)


def test_the_result_schema_names_the_journal_columns_and_the_summary_in_their_order():
    assert R.JOURNAL_COLUMNS == ("status", "reason", "val_bpb", "heldout_bpb", "test_bpb", "train_seconds",
                                 "slot_seconds", "eval_seconds", "sandbox")
    assert R.SUMMARY_FIELDS == ("status", "reason", "val_bpb", "heldout_bpb", "test_bpb", "scored_tokens",
                                "causality", "canary", "stateless", "budget", "train_seconds", "slot_seconds",
                                "eval_seconds", "startup_seconds", "export_seconds", "cpu_seconds", "steps")
    assert set(R.JOURNAL_COLUMNS) | set(R.SUMMARY_FIELDS) | set(R.SCORER_FIELDS) <= set(R.FIELDS)
    assert SlotResult().status == "failed" and SlotResult().failed  # a result that says nothing is never ok


def test_a_result_round_trips_through_json_and_reads_old_results_with_other_keys():
    result = SlotResult(status="ok", val_bpb=3.25, probes={"budget": {"pass": True}}, static_findings=[{"rule": "x"}],
                        limits={"memory_mb": 100}, steps=7)
    assert SlotResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    old = {"status": "flagged", "reason": "canary", "val_bpb": 1.0, "a_key_of_an_older_version": 5}
    back = SlotResult.from_dict(old)
    assert (back.status, back.reason, back.val_bpb, back.test_bpb, back.probes) == ("flagged", "canary", 1.0, None, {})
    assert back.flagged and not back.ok and not back.failed and "a_key_of_an_older_version" not in back.to_dict()


def test_flagging_adds_a_reason_to_those_a_result_has():
    result = SlotResult(status="flagged", reason="causality")
    result.flag("budget")
    assert (result.status, result.reason, result.reasons) == ("flagged", "causality,budget", ["causality", "budget"])
    fresh = SlotResult(status="ok")
    fresh.flag("budget")
    assert (fresh.status, fresh.reason) == ("flagged", "budget")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs a second core to take")
def test_a_genome_that_takes_more_cores_than_its_slot_has_fails_the_budget_probe(small_dataset, tmp_path):
    """The budget is wall seconds on the slot's threads: a genome that raised its own thread count got its
    neighbours' cores. The runner's CPU time from /proc shows it, however the genome did it."""
    greedy = slot("takes_every_core.py", small_dataset, tmp_path / "greedy", budget_s=4.0)
    assert (greedy.status, greedy.reason, greedy.budget) == ("flagged", "budget", "fail"), greedy.detail
    assert greedy.cpu_share > 1.25 and "cores on average" in greedy.probes["budget"]["detail"]
    honest = slot("evo_tiny.py", small_dataset, tmp_path / "honest", budget_s=4.0)  # trains on the slot's thread
    assert honest.ok and honest.budget == "pass" and honest.probes["budget"]["cpu_share"] <= 1.25, honest.detail


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs a second core to take")
def test_a_genome_that_idles_through_its_export_to_hide_a_second_core_fails_the_budget_probe(small_dataset, tmp_path):
    """Over the whole slot, the seconds a genome may idle after submit dilute its share; the training window
    (go to submit) is measured on its own."""
    idler = slot("dilutes_its_share.py", small_dataset, tmp_path / "idler", budget_s=4.0)
    budget = idler.probes["budget"]
    assert (idler.status, idler.reason, idler.budget) == ("flagged", "budget", "fail"), idler.detail
    assert budget["train_cpu_share"] > 1.25 and "while it trained" in budget["detail"]
    assert budget["cpu_share"] < budget["train_cpu_share"]  # what the whole slot alone would have shown


@pytest.mark.parametrize("genome", ["memory_in_a_memfd.py", "memory_in_a_mapped_memfd.py"])
def test_memory_held_in_a_memfd_counts_against_the_slots_memory_cap(small_dataset, tmp_path, genome):
    """Pages of a memfd that no mapping has touched are in no RSS: an open one is found by its fd, one whose
    every fd is closed by its mapping. (The mapped genome names /proc/self/fd, which the path rule refuses.)"""
    held = slot(genome, small_dataset, tmp_path / "memfd", budget_s=6.0, memory_mb=900, unchecked="mapped" in genome)
    assert (held.status, held.reason) == ("failed", "memory"), held.detail
    assert "over memory_mb=900" in held.detail
    if "mapped" in genome:  # no open fd held over 256 MiB, so only the mappings can have put it over the cap
        assert "mapped 1, memfd fds left: 0" in (tmp_path / "memfd" / "stdout.txt").read_text()


def test_the_cpu_of_child_processes_that_live_between_two_scans_is_counted(small_dataset, tmp_path):
    """A child that is born and reaped between two /proc scans is never seen; its CPU is in its parent's
    cutime and cstime, which the runner reads too."""
    forks = slot("forks_short_workers.py", small_dataset, tmp_path / "forks", unchecked=True, budget_s=5.0)
    assert forks.ok, forks.detail
    printed = re.search(r"kernel_cpu_seconds: ([0-9.]+)", (tmp_path / "forks" / "stdout.txt").read_text())
    kernel = float(printed.group(1))  # the genome's own and its reaped workers', up to its last step
    assert forks.cpu_seconds >= 0.9 * kernel, (forks.cpu_seconds, kernel)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs a core outside the slot")
def test_a_pinned_slot_keeps_a_genome_that_raises_its_thread_count_on_the_slots_own_cores(small_dataset, tmp_path):
    """Prevention rather than detection: every process of a pinned slot (the genome's and the scorer's) runs on
    the slot's cores only, so the genome's extra threads share its one core and its neighbours keep theirs."""
    from gpt import scorer as scorers

    core = max(os.sched_getaffinity(0))
    scorers.discard_idle()
    pinned = slot("takes_every_core.py", small_dataset, tmp_path / "pinned", budget_s=4.0, cpus=(core,))
    assert pinned.ok and pinned.budget == "pass", pinned.detail
    assert f"affinity: {core}\n" in (tmp_path / "pinned" / "stdout.txt").read_text()
    assert pinned.cpu_share <= 1.1 and pinned.limits["cpus"] == [core]
    kept = [s for s in scorers._IDLE if s.alive()]
    assert kept and all(os.sched_getaffinity(s.proc.pid) == {core} for s in kept)
    scorers.discard_idle()


def test_the_runner_takes_only_the_scorers_own_fields_from_its_answer():
    from gpt.scorer import scorer_result

    answer = {"status": "ok", "reason": None, "val_bpb": 2.5, "budget": "pass", "sandbox": "bwrap",
              "train_seconds": 0.0, "probes": {"causality": {"pass": True}}}
    result = scorer_result(0, json.dumps(answer), "")
    assert (result.status, result.val_bpb, result.probes) == ("ok", 2.5, {"causality": {"pass": True}})
    assert (result.budget, result.sandbox, result.train_seconds) == (None, None, None)  # the runner's, not the scorer's
    assert scorer_result(0, json.dumps({"status": "great"}), "").reason == "score_error"
    assert scorer_result(0, "not json", "").reason == "score_error"
    assert scorer_result(-9, "", "").reason == "score_memory"


def test_one_device_check():
    import torch

    from gpt import devices

    assert devices.visible_gpus() == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert devices.default_device() == ("cuda" if devices.visible_gpus() else "cpu")
