"""Red team: one genome per row of the gaming catalog (/work/shared/guides/gaming-catalog.md) that can be
written against the genome contract, one per sandbox escape, and tests that drive the real components
(run_slot, the scorer, the run state's fold/judge, prepare) for the rows about selection and data.

Every genome in this folder starts with a header: the row it plays, what it tries, and what evo must
produce. Each test asserts that specific outcome: rejected by a named rule, flagged by a named probe,
killed with a named reason, or a score no better than the honest genome's. Where evo does NOT produce
the outcome it should, the test asserts the outcome it should and is marked `xfail(strict=True)`: it
documents a known gap (see docs/integrity.md) and turns into a failure the day the gap is closed, so
the marker gets removed with the fix.

The honest reference is tests/genomes/evo_steps.py (evo_tiny with a fixed number of single-thread steps):
at one harness seed its val_bpb does not depend on how busy the machine is, so the genomes derived from
it can be compared with it exactly.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import statistics
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

import gpt
from conftest import GENOMES, REPO, SMALL_FRACTIONS, SMALL_SECRET, write_corpus
from evo.scheduler import Scheduler
from synthetic import add_child, fake, finish, new_run, slot_job
from gpt import sandbox
from gpt.data import SPLITS, prepare, split_of
from gpt.result import SlotResult
from gpt.clock import budget_tolerance
from gpt.runner import SlotJob, run_slot
from gpt.static_checks import check_source

RED = Path(__file__).resolve().parent
HONEST = GENOMES / "evo_steps.py"
SEED = 1234  # the harness seed of every single-slot comparison below
AVAILABLE = sandbox.available_levels()
needs_bwrap = pytest.mark.skipif("bwrap" not in AVAILABLE, reason="bubblewrap cannot create its sandbox here: "
                                                                   f"{sandbox.probe('bwrap')[1]}")


# ---------------------------------------------------------------- helpers
def variant(genome: Path, folder: Path, **knobs) -> Path:
    """A copy of `genome` with module-level `NAME = value` lines replaced (the test's injected values)."""
    text = genome.read_text()
    for name, value in knobs.items():
        text, n = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", text, count=1, flags=re.M)
        assert n == 1, f"{genome.name} has no line '{name} = ...'"
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{genome.stem}-{uuid.uuid4().hex[:6]}.py"
    out.write_text(text)
    return out


def slot(genome: Path, dataset, out: Path, **kw) -> tuple[SlotResult, str]:
    """run_slot with the red team's defaults; returns (result, stdout). Static checks are ON unless kw says so."""
    job = dict(genome=str(genome), dataset=str(dataset.path), out_dir=str(out), budget_s=4.0, grace_s=30.0,
               eval_tokens=4096, threads=1, seed=SEED, sandbox="auto")
    job.update(kw)
    result = run_slot(SlotJob(**job))
    assert json.loads((out / "result.json").read_text()) == result.to_dict()  # what the harness wrote, nothing else
    stdout = (out / "stdout.txt").read_text(errors="replace") if (out / "stdout.txt").exists() else ""
    return result, stdout


def report(stdout: str) -> dict:
    """The `REDTEAM {json}` line a red-team genome prints about its attempts."""
    line = next((x for x in stdout.splitlines() if x.startswith("REDTEAM ")), None)
    assert line is not None, f"the genome printed no REDTEAM line:\n{stdout[-2000:]}"
    return json.loads(line[len("REDTEAM "):])


def rules(result: SlotResult, severity: str = "reject") -> set[str]:
    return {f["rule"] for f in result.static_findings if f["severity"] == severity}


def reasons(result: SlotResult) -> list[str]:
    return (result.reason or "").split(",")


def assert_rejected_without_a_process(result: SlotResult, out: Path, *expected_rules: str) -> None:
    assert (result.status, result.reason) == ("failed", "rejected"), result
    assert set(expected_rules) <= rules(result), result.static_findings
    assert result.train_seconds == 0.0 and not (out / "work").exists(), "a process was started"


def assert_honest_probes(result: SlotResult) -> None:
    assert (result.status, result.reason) == ("ok", None), result.stderr_tail or result
    for probe in ("causality", "canary", "stateless", "budget"):
        assert result.probes[probe]["pass"], (probe, result.probes[probe])


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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


@pytest.fixture(scope="module")
def honest(small_dataset, tmp_path_factory) -> SlotResult:
    """The honest reference: evo_steps at harness seed SEED under the default sandbox."""
    result, _ = slot(HONEST, small_dataset, tmp_path_factory.mktemp("honest") / "slot")
    assert_honest_probes(result)
    assert result.steps == 30, "the honest reference must finish its fixed steps to be comparable"
    return result


# ---------------------------------------------------------------- a run driven with chosen results (tests/synthetic.py)
def noise(evolution: Scheduler, vals=(3.00, 3.02)) -> None:
    for val in vals:
        row = evolution.next_evaluation()
        assert row.purpose == "noise"
        finish(evolution, row, fake(val=val))
    assert evolution.state.floor == pytest.approx(statistics.stdev([v - statistics.fmean(vals) for v in vals]))


# ================================================================= row 1: the seed lottery
def test_r01_a_pinned_lucky_seed_is_rejected_by_the_seed_rule_before_any_process_starts(small_dataset, tmp_path):
    result, _ = slot(RED / "r01_seed_pinned.py", small_dataset, tmp_path / "slot")
    assert_rejected_without_a_process(result, tmp_path / "slot", "seed")
    assert "torch.manual_seed with a constant seed" in result.detail


def test_r01_a_seed_offset_knob_added_to_run_seed_passes_the_static_checks():
    # what makes the measured seed-gaming test below necessary: the rule cannot see this lottery
    assert check_source((RED / "r01_seed_offset.py").read_text()) == []


# Run seeds of the measured seed-gaming test. The outcome at a run seed is deterministic on one machine
# (fixed steps, one thread), but the floats may differ on another CPU, hence the non-strict xfail.
# Measured on the development machine with SEED_OFFSET 1..6 (first value < mean - floor: a candidate),
# with the harness seeds of evo's own genome ids (evo/genome.py, since the controller redesign):
#   run seed 1: floor 0.069, offset 1 lucky (4.321 < 4.365), re-evaluation 4.226: CROWNED (mean 4.273)
#   run seed 2: floor 0.030, offset 2 lucky (4.289 < 4.329), re-evaluation 4.384: not confirmed
#   run seed 3: floor 0.122, no offset lucky: nothing re-evaluated
#   run seed 4: floor 0.060, offset 5 lucky (4.233 < 4.254), re-evaluation 4.382: not confirmed
#   run seed 5: floor 0.070, no offset lucky
#   run seed 6: floor 0.027, offset 2 below the bar on val (4.226 < 4.291) but penalized by Thresholdout: none
#   run seed 7: floor 0.052, offset 1 lucky (4.285 < 4.287), re-evaluation 4.296: not confirmed
#   run seed 8: floor 0.008, offset 3 lucky (4.205 < 4.342), re-evaluation 4.322: not confirmed
SEED_GAMING_RUNS = [
    2,
    pytest.param(1, marks=pytest.mark.xfail(strict=False, reason=(
        "known gap: a floor measured from 3 noise evaluations, and a mean of 2 evaluations of the "
        "child, let a seed-only child through (docs/integrity.md, row 1)"))),
]


@pytest.mark.slow
@pytest.mark.parametrize("run_seed", SEED_GAMING_RUNS)
def test_r01_a_child_that_only_changes_its_seed_offset_is_never_crowned_and_its_reevaluation_shows_why(
        small_dataset, tmp_path, run_seed):
    """Seed gaming, measured with real slots through the real run state's fold/judge.

    The parent is r01_seed_offset.py (SEED_OFFSET = 0, i.e. exactly evo_steps); its 3 noise evaluations fix
    the floor. Children differ from it only in SEED_OFFSET. They are evaluated one after the other until one
    is a candidate (first evaluation better than the best by more than the floor: a lucky draw); its
    re-evaluation with a fresh harness seed regresses to the mean and it is not crowned. If no offset of
    the small search is lucky, none was even a candidate. Either way no seed-only child may be the best."""
    parent_path = RED / "r01_seed_offset.py"
    evolution = new_run(tmp_path / "run", parent_path, str(small_dataset.path), noise_repeats=3, budget_s=4.0,
                        grace_s=30.0, eval_tokens=4096, seed=run_seed)
    seed_id = evolution.state.seed_ids[0]

    def evaluate(row, slot_name):
        attempt = evolution.journal.mark_running(row.id, slot_name)
        result = run_slot(slot_job(evolution, row, attempt, threads=1))
        assert result.status == "ok", result.stderr_tail or result
        evolution.finish(row, result)
        return result

    while evolution.state.floor is None:
        evaluate(evolution.next_evaluation(), "cpu0")
    parent = evolution.state.records[seed_id]
    floor = evolution.state.floor
    print(f"run seed {run_seed}: parent val_bpb over 3 harness seeds {[round(v, 4) for v in parent.vals]}, "
          f"mean {parent.mean:.4f}, noise floor {floor:.4f}")

    tried, lucky = [], None
    for offset in (1, 2, 3, 4, 5, 6):
        source = parent_path.read_text().replace("SEED_OFFSET = 0 ", f"SEED_OFFSET = {offset} ")
        row = add_child(evolution, source, f"SEED_OFFSET 0 -> {offset}")
        value = evaluate(row, "cpu1").val_bpb
        tried.append((offset, round(value, 4), round(evolution.state.p_better(row.genome_id, shrink=False), 3)))
        if evolution.state.records[row.genome_id].candidate:
            lucky = row.genome_id
            break
    print(f"children (SEED_OFFSET, first val_bpb, P(better)): {tried}; a candidate needs P >= "
          f"{evolution.config.candidate_confidence}")

    if lucky is None:
        assert all(p < evolution.config.candidate_confidence for _, _, p in tried)
        assert evolution.journal.count_purpose("reeval") == 0, "a child within the noise was re-evaluated"
    else:
        first_seed = next(e.seed for e in evolution.journal.all_evaluations() if (e.genome_id, e.purpose) == (lucky, "child"))
        seeds = {first_seed}
        while evolution.journal.queued():  # the sequential rule: one fresh-seed re-evaluation at a time
            reeval = evolution.next_evaluation()
            assert (reeval.genome_id, reeval.purpose) == (lucky, "reeval")
            assert reeval.seed not in seeds, "not a fresh harness seed"
            seeds.add(reeval.seed)
            evaluate(reeval, "cpu1")
        rec = evolution.state.records[lucky]
        assert 2 <= len(rec.vals) <= evolution.config.max_candidate_evals
        print(f"lucky child: evaluations {[round(v, 4) for v in rec.vals]}, mean {rec.mean:.4f} vs the parent's "
              f"{parent.mean:.4f}")
    # row 12 on real slots: every evaluation journals the slot it ran in
    slots = {r.purpose: r.slot for r in evolution.journal.done_evaluations()}
    assert slots["noise"] == "cpu0" and slots["child"] == "cpu1"
    assert evolution.state.incumbent == seed_id, "a child that only changed its seed was crowned"
    assert not evolution.journal.events("new_best")
    if lucky is not None:
        assert [e["genome_id"] for e in evolution.journal.events("not_confirmed")] == [lucky]


# ================================================================= row 2: gains smaller than the noise
def test_r02_a_child_better_than_the_best_by_less_than_the_noise_floor_is_neither_a_candidate_nor_crowned(tmp_path):
    evolution = new_run(tmp_path / "run", GENOMES / "evo_tiny.py")
    noise(evolution)  # seed mean 3.01, floor 0.0141
    seed_id = evolution.state.seed_ids[0]
    row = add_child(evolution, (GENOMES / "evo_tiny.py").read_text().replace("WIDTH = 16", "WIDTH = 32"),
                    "WIDTH 16 -> 32")
    finish(evolution, row, fake(val=3.00))  # 0.01 better: inside the floor
    assert not evolution.state.records[row.genome_id].candidate
    assert evolution.journal.count_purpose("reeval") == 0
    assert evolution.state.incumbent == seed_id


def test_r02_a_staircase_of_sub_floor_gains_never_moves_the_incumbent(tmp_path):
    """The running minimum of noise drifts down under keep-if-better; evo's reference stays put, so
    the small steps do not add up."""
    evolution = new_run(tmp_path / "run", GENOMES / "evo_tiny.py")
    noise(evolution)
    seed_id = evolution.state.seed_ids[0]
    source = (GENOMES / "evo_tiny.py").read_text()
    steps = (3.005, 3.000, 2.998, 2.997)  # each better than the last, each within 0.0141 of the seed's 3.01
    for i, val in enumerate(steps):
        source = source.replace(f"LEARNING_RATE = {0.03 + i / 1000:g}", f"LEARNING_RATE = {0.03 + (i + 1) / 1000:g}")
        row = add_child(evolution, source, f"step {i}")
        finish(evolution, row, fake(val=val))
        assert not evolution.state.records[row.genome_id].candidate
    assert evolution.state.incumbent == seed_id
    assert evolution.journal.count_purpose("reeval") == 0 and not evolution.journal.events("new_best")


# ================================================================= row 3: training on the validation data
def test_r03_reading_the_slot_spec_and_naming_val_bin_is_rejected_before_any_process_starts(small_dataset, tmp_path):
    result, _ = slot(RED / "r03_val_by_path.py", small_dataset, tmp_path / "slot")
    assert_rejected_without_a_process(result, tmp_path / "slot", "environ", "eval_data")


@needs_bwrap
def test_r03_under_bwrap_the_guessed_val_path_does_not_exist_and_the_slot_scores_honestly(small_dataset, tmp_path):
    result, stdout = slot(RED / "r03_val_by_path.py", small_dataset, tmp_path / "slot", sandbox="bwrap",
                          static_checks=False)
    r = report(stdout)
    assert r["listing"] == ["train"], r  # the dataset folder holds the train split only
    assert r["val"].startswith("FileNotFoundError") and r["manifest.json"].startswith("FileNotFoundError"), r
    assert r["trained_on"] == "train"
    assert (small_dataset.path / "eval" / "val.bin").exists()  # it is there, on the host
    assert_honest_probes(result)


@pytest.mark.slow
def test_r03_under_sandbox_none_a_model_trained_on_stolen_val_tokens_is_flagged_by_the_canary_probe(
        small_dataset, tmp_path, honest):
    result, stdout = slot(RED / "r03_val_by_path.py", small_dataset, tmp_path / "slot", sandbox="none",
                          static_checks=False, budget_s=15.0)
    r = report(stdout)
    assert r["trained_on"] == "val" and r["val"].startswith("read "), r
    assert result.status == "flagged" and reasons(result) == ["canary"], result
    canary = result.probes["canary"]
    assert not canary["val"]["pass"] and canary["heldout"]["pass"]
    print(f"val-trained: val {result.val_bpb:.3f} heldout {result.heldout_bpb:.3f}, canary gap "
          f"{canary['val']['gap_bits']:.2f} bits; honest: val {honest.val_bpb:.3f}")
    # what the probe is for: without it, this would be the best genome by far
    assert result.val_bpb < honest.val_bpb - 1.0
    assert result.val_bpb < result.heldout_bpb - 1.0


@needs_bwrap
def test_r03_obfuscated_eval_paths_pass_the_static_checks_but_not_the_bwrap_sandbox(small_dataset, tmp_path):
    assert check_source((RED / "r03_val_obfuscated.py").read_text()) == []  # the checks are a filter only
    result, stdout = slot(RED / "r03_val_obfuscated.py", small_dataset, tmp_path / "slot", sandbox="bwrap")
    r = report(stdout)
    assert r["train_path"] == str(small_dataset.train_path)  # it did find the dataset folder
    assert r["val"].startswith("FileNotFoundError") and r["heldout"].startswith("FileNotFoundError"), r
    assert r["trained_on"] == "train"
    assert_honest_probes(result)


# ================================================================= row 4: overlap through data preparation
@pytest.fixture(scope="module")
def overlap_corpus(small_docs, tmp_path_factory):
    """120 documents, one of them also under four other file names, and one near-duplicate of another
    (the same text plus trailing spaces) chosen so that its content hash sends it to another split."""
    root = tmp_path_factory.mktemp("overlap")
    docs = small_docs[:120]
    folder = write_corpus(root / "corpus", docs)
    copied = docs[5]
    for name in ("copy_a.txt", "mirror_of_doc_0005.txt", "zz_again.txt", "doc_0005 (1).txt"):
        (folder / name).write_text(copied, encoding="utf-8")
    original = docs[7]
    near = next(original + " " * k for k in range(1, 200)
                if split_of(original + " " * k, SMALL_FRACTIONS, SMALL_SECRET)
                != split_of(original, SMALL_FRACTIONS, SMALL_SECRET))
    (folder / "near_copy_of_doc_0007.txt").write_text(near, encoding="utf-8")
    dataset = prepare(f"text:{folder}/*.txt", root=root / "data", fractions=SMALL_FRACTIONS, secret=SMALL_SECRET)
    splits = {s: np.asarray(dataset.tokens(s)).astype(np.uint8).tobytes() for s in SPLITS}
    return dataset, splits, copied, original


def test_r04_a_document_under_five_file_names_lands_in_exactly_one_split_once(overlap_corpus):
    dataset, splits, copied, _ = overlap_corpus
    assert dataset.manifest["duplicates_removed"] == 4
    found = {s: b.count(copied.encode()) for s, b in splits.items() if copied.encode() in b}
    assert found == {split_of(copied, SMALL_FRACTIONS, SMALL_SECRET): 1}, found


@pytest.mark.xfail(strict=True, reason="known gap: de-duplication is exact (sha256 of the text); a near-duplicate "
                                       "(here: trailing spaces) hashes to its own split (docs/integrity.md, row 4)")
def test_r04_a_near_duplicate_document_does_not_put_the_same_text_in_two_splits(overlap_corpus):
    _, splits, _, original = overlap_corpus
    holding = [s for s, b in splits.items() if original.encode() in b]
    assert len(holding) == 1, f"the same text is in {holding}"


# ================================================================= row 5: non-causal prediction
def test_r05_attention_without_its_causal_mask_is_flagged_causality(small_dataset, tmp_path):
    result, _ = slot(RED / "r05_noncausal_attention.py", small_dataset, tmp_path / "slot")
    assert result.status == "flagged" and reasons(result) == ["causality"], result
    assert result.probes["causality"]["max_prefix_change"] > 100 * result.probes["causality"]["tolerance"]


def test_r05_a_feature_that_reads_the_next_token_is_flagged_causality_despite_its_near_zero_bpb(
        small_dataset, tmp_path, honest):
    result, _ = slot(RED / "r05_peek_next_token.py", small_dataset, tmp_path / "slot")
    assert result.status == "flagged" and reasons(result) == ["causality"], result
    assert result.val_bpb < honest.val_bpb - 2.0  # the cheat "works": that is why the probe exists


# ================================================================= row 6: unnormalized probabilities
def test_r06_log_probs_shifted_by_10_nats_score_exactly_what_the_honest_genome_scores(small_dataset, tmp_path, honest):
    result, _ = slot(RED / "r06_unnormalized.py", small_dataset, tmp_path / "slot")
    assert_honest_probes(result)
    # same training, same harness seed: the constant shift cancels in the scorer's own log_softmax
    assert result.val_bpb == pytest.approx(honest.val_bpb, abs=1e-4)
    assert result.heldout_bpb == pytest.approx(honest.heldout_bpb, abs=1e-4)


def test_r06_probabilities_that_sum_to_277_score_no_better_than_the_honest_genome(small_dataset, tmp_path, honest):
    genome = variant(RED / "r06_unnormalized.py", tmp_path, OUTPUT="scaled_probs")
    result, _ = slot(genome, small_dataset, tmp_path / "slot")
    assert_honest_probes(result)
    print(f"scaled_probs val {result.val_bpb:.4f} vs honest {honest.val_bpb:.4f}")
    assert result.val_bpb >= honest.val_bpb - 1e-4


# ================================================================= row 7: printing the metric, rewriting the evaluator
@needs_bwrap
def test_r07_a_printed_val_bpb_and_a_rewritten_scorer_change_nothing(small_dataset, tmp_path, honest):
    scorer = Path(gpt.__file__).resolve().parent / "score.py"
    before = sha(scorer)
    result, stdout = slot(RED / "r07_forge_metric.py", small_dataset, tmp_path / "slot", sandbox="bwrap",
                          static_checks=False)
    r = report(stdout)
    assert "val_bpb:      0.010000" in stdout  # it did print its own metric
    assert r["overwrite_scorer"].startswith("OSError") and "Read-only" in r["overwrite_scorer"], r
    assert sha(scorer) == before
    assert_honest_probes(result)
    assert result.val_bpb == pytest.approx(honest.val_bpb, abs=1e-4)  # the scorer's number, not 0.01
    # a result.json it wrote in the sandbox (if any) is not the harness's file
    assert json.loads((tmp_path / "slot" / "result.json").read_text())["val_bpb"] == result.val_bpb


def test_r07_static_checks_reject_a_genome_that_reaches_for_the_scorer(small_dataset, tmp_path):
    result, _ = slot(RED / "r07_forge_metric.py", small_dataset, tmp_path / "slot")
    assert_rejected_without_a_process(result, tmp_path / "slot", "lab_private")


# ================================================================= row 8: timer tricks
def test_r08_monkeypatching_time_monotonic_is_rejected_by_the_monkeypatch_rule(small_dataset, tmp_path):
    result, _ = slot(RED / "r08_patch_clock.py", small_dataset, tmp_path / "slot")
    assert_rejected_without_a_process(result, tmp_path / "slot", "monkeypatch")


def test_r08_patching_the_clock_through_the_module_dict_is_rejected_too():
    source = (RED / "r08_patch_clock.py").read_text()
    patched = source.replace("time.monotonic = lambda:", 'time.__dict__["monotonic"] = lambda:')
    assert patched != source
    findings = check_source(patched)
    assert any(f.severity == "reject" for f in findings), findings


@pytest.mark.slow
def test_r08_with_static_checks_off_a_frozen_clock_is_killed_at_budget_plus_grace(small_dataset, tmp_path):
    genome = variant(RED / "r08_patch_clock.py", tmp_path, CLOCK_RATE=0.0)
    budget, grace = 2.0, 4.0
    result, _ = slot(genome, small_dataset, tmp_path / "slot", static_checks=False, budget_s=budget, grace_s=grace)
    assert (result.status, result.reason) == ("failed", "timeout"), result
    assert budget + grace - 0.1 <= result.train_seconds <= budget + grace + 8


@pytest.mark.slow
def test_r08_with_static_checks_off_a_slowed_clock_that_submits_inside_the_grace_is_flagged_budget(
        small_dataset, tmp_path):
    result, stdout = slot(RED / "r08_patch_clock.py", small_dataset, tmp_path / "slot", static_checks=False,
                          budget_s=2.0)
    real = float(re.search(r"REAL_TRAIN_S (\S+)", stdout).group(1))
    print(f"trained {real:.1f} s of real time on a 2 s budget; result {result.status} {result.reason}, "
          f"startup_seconds {result.startup_seconds}")
    assert real > 2.0 + budget_tolerance(2.0)  # it did overrun: the attack worked
    assert result.status == "flagged" and "budget" in reasons(result)


def test_r08_training_on_inside_the_kill_grace_is_flagged_budget(small_dataset, tmp_path):
    result, _ = slot(RED / "r08_overrun_grace.py", small_dataset, tmp_path / "slot", budget_s=2.0)
    assert result.status == "flagged" and reasons(result) == ["budget"], result
    probe = result.probes["budget"]
    assert probe["overrun_s"] > probe["tolerance_s"] == budget_tolerance(2.0)


def test_r08_exporting_without_run_submit_after_training_past_the_clock_is_flagged_budget(small_dataset, tmp_path):
    assert check_source((RED / "r08_self_export.py").read_text()) == []
    result, stdout = slot(RED / "r08_self_export.py", small_dataset, tmp_path / "slot", budget_s=2.0)
    assert "time_left at export: -3" in stdout  # it trained 3 s past its clock
    # an artifact that did not come through run.submit() has no timings the clock can vouch for
    assert result.status == "flagged" and "budget" in reasons(result), result


@pytest.mark.slow
@pytest.mark.parametrize("mode, extra", [("deadline", 4.0), ("silent", 4.0), ("early_submit", 6.0)])
def test_r08_patching_gpt_lab_inside_the_genome_gains_no_unflagged_time(small_dataset, tmp_path, mode, extra):
    """gpt.lab runs in the genome's process: moving its deadline, silencing its clock words or saying
    `submit` early changes what the genome believes, not what the runner measured."""
    genome = variant(RED / "r08_patch_lab.py", tmp_path, MODE=mode, EXTRA_S=extra)
    result, stdout = slot(genome, small_dataset, tmp_path / "slot", static_checks=False, budget_s=2.0)
    real = float(re.search(r"REAL_TRAIN_S (\S+)", stdout).group(1))
    print(f"{mode}: trained {real:.1f} s on a 2 s budget -> {result.status} {result.reason}, "
          f"clock {result.probes.get('budget')}")
    assert real > 2.0 + budget_tolerance(2.0)  # the trick really trained past the budget
    assert result.status == "flagged" and "budget" in reasons(result), result


@pytest.fixture(scope="module")
def reconnect(small_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("reconnect") / "slot"
    result, stdout = slot(RED / "r08_reconnect.py", small_dataset, out, budget_s=2.0)
    return result, report(stdout)


@pytest.mark.slow
def test_r08_a_second_connect_returns_the_same_run_and_clock_so_reconnecting_buys_no_time(reconnect):
    result, r = reconnect
    print(f"reconnect trick: {r['pre_steps']} steps before the last connect ({r['pre_seconds']} s), "
          f"{r['post_steps']} after; time_left probes {r['first_probes']} ... {r['last_probes']}")
    probes = r["first_probes"] + r["last_probes"]
    assert probes[0] <= r["budget_s"]  # one clock: no probe ever sees a fresh budget again
    assert all(b <= a for a, b in zip(r["first_probes"], r["first_probes"][1:]))
    assert r["pre_seconds"] <= r["budget_s"] + 0.5  # all its training fits the one budget
    assert result.status == "ok" and result.probes["budget"]["pass"], result


# ================================================================= row 9: copying weights or answers
@pytest.fixture(scope="module")
def donor(tmp_path_factory, small_dataset):
    """Another genome's artifact, where an evo run would keep it: <run>/evals/00001-1/work/. An honest
    genome trained 200 steps instead of the reference's 30: worth borrowing."""
    root = tmp_path_factory.mktemp("run")
    out = root / "evals" / "00001-1"
    result, _ = slot(variant(HONEST, root / "genomes", STEPS=200), small_dataset, out, budget_s=10.0)
    assert_honest_probes(result)
    assert (out / "work" / "program.json").is_file() and (out / "work" / "weights.safetensors").is_file()
    return root, result


@needs_bwrap
def test_r09_under_bwrap_a_search_for_other_slots_artifacts_finds_nothing_and_it_trains_honestly(
        small_dataset, donor, honest):
    root, donor_result = donor
    out = root / "evals" / "00002-1"
    result, stdout = slot(RED / "r09_borrow_artifact.py", small_dataset, out, sandbox="bwrap")
    r = report(stdout)
    assert str(root.resolve()) in r["roots"]  # it searched the run dir, where the donor is on the host
    assert r["found"] == [] and "borrowed" not in r, r
    assert_honest_probes(result)
    assert result.val_bpb == pytest.approx(honest.val_bpb, abs=1e-4)


def test_r09_a_symlink_to_another_genomes_artifact_is_flagged_artifact_link(small_dataset, donor):
    root, _ = donor
    out = root / "evals" / "00003-1"
    result, stdout = slot(RED / "r09_link_artifact.py", small_dataset, out)
    assert report(stdout)["program.json"]["planted"] in ("symlink", "hard link")
    assert (result.status, result.reason) == ("flagged", "artifact_link"), result
    assert result.val_bpb is None  # nothing was scored


def test_r09_under_sandbox_none_a_copied_artifact_is_not_scored_as_its_own(small_dataset, donor):
    """Sandbox 'none' cannot stop the copy (no file-system isolation), but a copied artifact did not
    come through run.submit(): the runner's clock never heard `submit`, so the budget probe flags it."""
    root, donor_result = donor
    out = root / "evals" / "00004-1"
    result, stdout = slot(RED / "r09_borrow_artifact.py", small_dataset, out, sandbox="none")
    borrowed = report(stdout).get("borrowed")
    assert borrowed, "the copy failed: nothing to document"
    print(f"borrowed {borrowed}: scored {result.status} val {result.val_bpb} "
          f"(the donor's val {donor_result.val_bpb})")
    assert result.status == "flagged" and "budget" in reasons(result), result


# ================================================================= row 10: editing the tests or the scoring code
@needs_bwrap
def test_r10_a_genome_cannot_edit_the_scorer_the_checks_the_tests_or_evo(small_dataset, tmp_path):
    files = ["gpt/score.py", "gpt/static_checks.py", "tests/test_score.py", "tests/conftest.py", "evo/fitness.py"]
    before = {f: sha(REPO / f) for f in files}
    result, stdout = slot(RED / "r10_edit_harness.py", small_dataset, tmp_path / "slot", sandbox="bwrap",
                          static_checks=False)
    r = report(stdout)
    assert "tests" not in r["repo_listing"] and "evo" not in r["repo_listing"], r  # only gpt/ (and the venv)
    for f in files:
        assert r[f] != "ok", (f, r[f])
    assert {f: sha(REPO / f) for f in files} == before
    assert not (REPO / "gpt" / "sitecustomize.py").exists() and not (REPO / "tests" / "test_zz_redteam.py").exists()
    assert (result.status, result.reason) == ("failed", "no_submit")


def test_r10_static_checks_reject_a_genome_that_locates_the_harness_through_lab(small_dataset, tmp_path):
    result, _ = slot(RED / "r10_edit_harness.py", small_dataset, tmp_path / "slot")
    assert_rejected_without_a_process(result, tmp_path / "slot", "lab_private")


# ================================================================= row 11: adaptive overfitting of the holdout
def test_r11_a_child_that_fits_val_but_not_heldout_is_penalized_by_thresholdout_and_not_a_candidate(tmp_path):
    evolution = new_run(tmp_path / "run", GENOMES / "evo_tiny.py")
    noise(evolution)  # seed: val 3.01, heldout - val = 0.01
    row = add_child(evolution, (GENOMES / "evo_tiny.py").read_text().replace("WIDTH = 16", "WIDTH = 8"),
                    "overfits val")
    finish(evolution, row, fake(val=2.50, heldout=3.40))  # 0.5 better on val, 0.38 worse on held-out
    rec = evolution.state.records[row.genome_id]
    assert rec.answer > 3.0 and rec.penalty > 0.5  # Thresholdout revealed the held-out gap
    assert rec.fitness < evolution.state.records[evolution.state.seed_ids[0]].fitness
    assert not rec.candidate and evolution.state.incumbent == evolution.state.seed_ids[0]
    done = next(e for e in evolution.journal.all_evaluations() if e.genome_id == row.genome_id)
    assert done.revealed == 1 and done.penalty == pytest.approx(rec.penalty)


# ================================================================= row 12: hardware and contention confounds
def test_r12_every_evaluation_journals_the_slot_it_ran_in(tmp_path):
    evolution = new_run(tmp_path / "run", GENOMES / "evo_tiny.py")
    for val, slot_name in ((3.00, "cpu0"), (3.02, "cpu1")):
        finish(evolution, evolution.next_evaluation(), fake(val=val), slot_name)
    row = add_child(evolution, (GENOMES / "evo_tiny.py").read_text().replace("WIDTH = 16", "WIDTH = 32"), "w")
    finish(evolution, row, fake(val=3.01), "gpu0")
    journaled = [(r.purpose, r.slot) for r in evolution.journal.done_evaluations()]
    assert sorted(journaled) == [("child", "gpu0"), ("noise", "cpu0"), ("noise", "cpu1")]


# ================================================================= row 13: learning at evaluation time
def test_r13_a_model_that_learns_from_the_eval_stream_is_refused_before_it_is_scored(small_dataset, tmp_path):
    """The artifact is functionalized at load: its index_add_ into a buffer becomes a declared mutation."""
    result, _ = slot(RED / "r13_test_time_training.py", small_dataset, tmp_path / "slot")
    assert (result.status, result.reason) == ("failed", "bad_artifact"), result
    assert "changes its buffers" in result.detail and result.val_bpb is None


# ================================================================= row 14: a hack spreading through crossover
def test_r14_with_crossover_forced_a_flagged_genome_with_the_best_score_is_never_a_mate(tmp_path):
    """Every child is a knob crossover (crossover_rate 1.0) of two members; the flagged genome, which has by far
    the best val_bpb, never is one of them, so its hack cannot spread. (tests/test_evolution.py's
    test_flagged_and_failed_genomes_are_never_chosen_as_parents checks the same at a rate of 0.3.)"""
    evolution = new_run(tmp_path / "run", GENOMES / "evo_tiny.py", population_size=8, crossover_rate=1.0,
                        gp_share=0.0)
    noise(evolution)
    seed_source = (GENOMES / "evo_tiny.py").read_text()

    def knobs(**values):
        source = seed_source
        for name, value in values.items():
            source, n = re.subn(rf"^{name} = \S+", f"{name} = {value}", source, count=1, flags=re.M)
            assert n == 1
        return source

    children = {"good_a": (knobs(WIDTH=32, SEQ_LEN=32), fake(val=3.03)),
                "flagged": (knobs(WIDTH=8, WEIGHT_DECAY=0.05), fake("flagged", val=0.5, heldout=0.5, reason="canary")),
                "good_b": (knobs(BATCH_SIZE=8, LEARNING_RATE=0.05), fake(val=3.04))}
    ids = {}
    for name, (source, res) in children.items():
        row = add_child(evolution, source, name)
        finish(evolution, row, res)
        ids[name] = row.genome_id
    assert {m.genome_id for m in evolution.state.population} == {evolution.state.seed_ids[0], ids["good_a"], ids["good_b"]}
    crossovers, mates = 0, set()
    for index in range(100, 200):
        child = evolution.breeder.propose(index)
        if child is None or len(child.parents) != 2:
            continue
        crossovers += 1
        mates.update(child.parents)
        assert ids["flagged"] not in child.parents, f"proposal {index} mated the flagged genome: {child.parents}"
    assert crossovers > 20
    assert mates == {evolution.state.seed_ids[0], ids["good_a"], ids["good_b"]}


# ================================================================= sandbox escapes
@pytest.fixture
def listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.setblocking(False)
    yield srv
    srv.close()


def test_escape_network_is_rejected_by_the_network_rule(small_dataset, tmp_path):
    result, _ = slot(RED / "esc_network.py", small_dataset, tmp_path / "slot")
    assert_rejected_without_a_process(result, tmp_path / "slot", "network")


@needs_bwrap
def test_escape_network_every_connection_fails_under_bwrap_and_the_host_listener_sees_nothing(
        small_dataset, tmp_path, listener):
    genome = variant(RED / "esc_network.py", tmp_path, PORT=listener.getsockname()[1])
    result, stdout = slot(genome, small_dataset, tmp_path / "slot", sandbox="bwrap", static_checks=False)
    r = report(stdout)
    for name in ("host_loopback", "dns", "llm_api", "pypi", "http", "public_ip"):
        assert r[name][0] != "ok", (name, r[name])
    with pytest.raises(BlockingIOError):
        listener.accept()
    assert (result.status, result.reason) == ("failed", "no_submit")


@needs_bwrap
def test_escape_secrets_in_the_harness_environment_never_reach_the_genome(small_dataset, tmp_path, monkeypatch):
    secret = f"sk-redteam-{uuid.uuid4().hex}"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("EVO_TEST_TOKEN", secret)
    result, stdout = slot(RED / "esc_secrets.py", small_dataset, tmp_path / "slot", sandbox="bwrap",
                          static_checks=False)
    r = report(stdout)
    assert "OPENAI_API_KEY" not in r["env_names"] and "EVO_TEST_TOKEN" not in r["env_names"], r
    assert set(r["suspicious"]) <= {"EVO_SLOT_TOKEN"}, r  # the slot's own marker, not a secret
    assert r["files"]["/etc/shadow"] == "FileNotFoundError"
    assert not any(v.startswith("read") for k, v in r["files"].items() if "/proc/" not in k), r["files"]
    for path in (tmp_path / "slot").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"the secret leaked into {path}"
    assert (result.status, result.reason) == ("failed", "no_submit")


def test_escape_secrets_is_rejected_by_the_environ_rule(small_dataset, tmp_path):
    result, _ = slot(RED / "esc_secrets.py", small_dataset, tmp_path / "slot")
    assert_rejected_without_a_process(result, tmp_path / "slot", "environ")


@needs_bwrap
def test_escape_writing_outside_the_work_dir_leaves_no_file_on_the_host(small_dataset, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    genome = variant(RED / "esc_write_outside.py", tmp_path / "genomes", OUTSIDE=str(outside))
    mark = "evo-redteam-escaped"
    existing = {p for p in Path("/tmp").glob(mark + "*")}
    result, stdout = slot(genome, small_dataset, tmp_path / "slot", sandbox="bwrap", static_checks=False)
    r = report(stdout)
    for name, path in r["targets"].items():
        assert not Path(path).exists() or Path(path) in existing, f"{name}: {path} was written on the host"
    assert list(outside.iterdir()) == []
    assert not list(REPO.glob(mark + "*")) and not list(small_dataset.path.glob(mark + "*"))
    assert not list((tmp_path / "slot").glob(mark + "*"))
    assert (result.status, result.reason) == ("failed", "no_submit")


def test_escape_writing_outside_is_rejected_by_the_path_rule(small_dataset, tmp_path):
    result, _ = slot(RED / "esc_write_outside.py", small_dataset, tmp_path / "slot")
    assert_rejected_without_a_process(result, tmp_path / "slot", "path")


def test_escape_lingering_daemons_are_killed_when_the_slot_ends_and_the_slot_still_scores(small_dataset, tmp_path):
    mark = f"evo-redteam-daemon-{uuid.uuid4().hex}"
    genome = variant(RED / "esc_lingering.py", tmp_path, MARK=mark)
    result, stdout = slot(genome, small_dataset, tmp_path / "slot", static_checks=False)
    assert "spawned daemons, trained" in stdout
    assert_honest_probes(result)
    assert result.leftover_processes == 2
    deadline = time.monotonic() + 3
    while processes_with(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with(mark) == []


def test_escape_lingering_is_rejected_by_the_process_rule(small_dataset, tmp_path):
    result, _ = slot(RED / "esc_lingering.py", small_dataset, tmp_path / "slot")
    assert_rejected_without_a_process(result, tmp_path / "slot", "process")


# ================================================================= a harness bug found on the way (fixed)
def test_bug_an_honest_genome_that_calls_torch_compile_right_after_connect_scores_ok(small_dataset, tmp_path):
    result, _ = slot(RED / "bug_compile_after_connect.py", small_dataset, tmp_path / "slot")
    assert result.status == "ok", result.stderr_tail[-600:]
