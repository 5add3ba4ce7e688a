"""Red team, second pass: attacks on the clock, the causality probe's coverage, the scorer's unclocked
compute and the sandbox's view of the corpus. Each test asserts the SAFE outcome; where evo does not
produce it today the test is `xfail(strict=True)` with the FINDING in its reason (it starts failing the
day the gap is closed: then remove the marker). Genomes: tests/redteam/x_*.py (each header says what it
tries and what evo must produce). The honest twins: tests/genomes/evo_steps.py at the same harness seed,
or the same genome with its attack knob off.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import GENOMES
from test_redteam import report, variant  # noqa: F401  (the first pass's helpers)
from test_redteam import slot as redteam_slot
from gpt import sandbox
from gpt.clock import budget_tolerance, default_export_allowance
from gpt.result import SlotResult
from gpt.sealing import seal
from gpt.static_checks import check_source

RED = Path(__file__).resolve().parent
HONEST = GENOMES / "evo_steps.py"
SEED = 1234
needs_bwrap = pytest.mark.skipif("bwrap" not in sandbox.available_levels(), reason="bubblewrap cannot run here")


def slot(genome: Path, dataset, out: Path, **kw) -> tuple[SlotResult, str]:
    """The first pass's slot helper, under bwrap unless told otherwise (every attack here is about it)."""
    return redteam_slot(genome, dataset, out, **{"sandbox": "bwrap", **kw})


def ok(result: SlotResult) -> bool:
    return result.status == "ok" and result.reason is None


@pytest.fixture(scope="module")
def honest(small_dataset, tmp_path_factory) -> SlotResult:
    result, _ = slot(HONEST, small_dataset, tmp_path_factory.mktemp("honest2") / "slot")
    assert ok(result) and result.steps == 30, result
    return result


# ---------------------------------------------------------------- the clock
@needs_bwrap
@pytest.mark.slow
def test_x_clock_stack_hidden_connect_plus_early_submit_gains_no_unflagged_time(small_dataset, tmp_path):
    genome = RED / "x_clock_stack.py"
    assert check_source(genome.read_text()) == []  # the whole trick is invisible to the static checks
    twin, twin_out = slot(variant(genome, tmp_path, MODE="honest"), small_dataset, tmp_path / "honest", budget_s=2.0)
    result, stdout = slot(genome, small_dataset, tmp_path / "attack", budget_s=2.0)
    a, h = report(stdout), report(twin_out)
    print(f"clock stack: trained {a['train_s']} s / {a['steps']} steps (honest twin {h['train_s']} s / "
          f"{h['steps']} steps) on a 2 s budget; val_bpb {result.val_bpb} vs {twin.val_bpb}; "
          f"{result.status} {result.reason}; runner saw train_seconds {result.train_seconds:.2f}, "
          f"export {result.export_seconds}, startup {result.startup_seconds}")
    assert ok(twin) and a["clock_fd"] is not None
    assert a["train_s"] > 2.0 + 5.0  # the attack really trained far past the budget
    assert result.status == "flagged" and "budget" in result.reason, result


@pytest.mark.slow
def test_x_training_before_connect_is_on_the_clock(small_dataset, tmp_path):
    """The clock starts at `go`, the genome's first line: 2.5 s of training before lab.connect() plus a
    full budget after it is a late submit (under the old clock, from connect, it scored as punctual)."""
    genome = RED / "x_train_before_connect.py"
    assert not [f for f in check_source(genome.read_text()) if f.severity == "reject"]
    result, stdout = slot(genome, small_dataset, tmp_path / "attack", budget_s=2.0)
    twin, twin_out = slot(variant(genome, tmp_path, MODE="honest"), small_dataset, tmp_path / "honest", budget_s=2.0)
    a, h = report(stdout), report(twin_out)
    print(f"train before connect: {a} -> {result.status} {result.reason}, train_seconds {result.train_seconds}; "
          f"honest twin {h} -> {twin.status}, train_seconds {twin.train_seconds}")
    assert a["pre_s"] >= 2.5 and a["post_s"] >= 2.0  # it really trained 2.5 s before connect and 2 s after
    assert result.status == "flagged" and "budget" in result.reason, result
    assert ok(twin), twin  # the same pre-connect work, then the lab's clock: on time
    assert h["post_s"] < 0.5 and twin.train_seconds < 2.0 + budget_tolerance(2.0)  # connect found the budget spent


# ---------------------------------------------------------------- causality probe coverage
@needs_bwrap
def test_x_cross_row_peek_is_flagged_or_gains_nothing(small_dataset, tmp_path, honest):
    result, _ = slot(RED / "x_cross_row_peek.py", small_dataset, tmp_path / "slot", static_checks=False)
    print(f"cross-row peek: val {result.val_bpb} vs honest {honest.val_bpb}; "
          f"{result.status} {result.reason}")
    assert result.status == "flagged" or result.val_bpb >= honest.val_bpb - 1e-6, result


@pytest.fixture(scope="module")
def lottery(small_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("lottery") / "slot"
    result, _ = slot(RED / "x_batch_lottery.py", small_dataset, out, static_checks=False, eval_tokens=32768)
    twin, _ = slot(HONEST, small_dataset, out.parent / "twin", eval_tokens=32768)
    return out / "work", result, twin


@needs_bwrap
@pytest.mark.slow
def test_x_batch_lottery_is_flagged_at_every_probe_seed_where_it_gains(small_dataset, lottery):
    from gpt.score import score

    work, result, twin = lottery
    runs = [result]
    for s in range(6):
        runs.append(score({"artifact": str(work), "dataset": str(small_dataset.path), "seq_len": 256,
                           "eval_tokens": 32768, "threads": 1, "probe_seed": 1000 + s}))
    verdicts = [r.status for r in runs]
    # which batches the gate opens on depends on the secret batch order: the cheat shows in val or heldout
    gains = [max(twin.val_bpb - (r.val_bpb if r.val_bpb is not None else twin.val_bpb),
                 twin.heldout_bpb - (r.heldout_bpb if r.heldout_bpb is not None else twin.heldout_bpb)) for r in runs]
    print(f"batch lottery: gains over the honest twin {[round(g, 3) for g in gains]}; verdicts {verdicts}")
    assert max(gains) > 0.3  # the cheat works where it cheats
    # every evaluation where it gained anything is flagged (where its gate never opened, it was honest)
    assert all(v == "flagged" for v, g in zip(verdicts, gains) if g > 0.01), list(zip(verdicts, gains))


# ---------------------------------------------------------------- compute outside the clock
@needs_bwrap
@pytest.mark.xfail(strict=False, reason="FINDING: the scorer's compute is unclocked: a graph that runs 60 more SGD "
                   "steps on stored train batches inside forward() scores better than its honest twin (the same "
                   "30 steps in budget), every probe passing. Where its export (tracing the 60 steps) takes longer "
                   "than the 5 s export allowance the budget probe flags it, so on a slow machine it xpasses")
def test_x_training_inside_the_exported_graph_gains_nothing(small_dataset, tmp_path, honest):
    result, _ = slot(RED / "x_eval_time_training.py", small_dataset, tmp_path / "slot", static_checks=False)
    print(f"in-graph training: val {result.val_bpb} vs honest {honest.val_bpb}; {result.status} "
          f"{result.reason}; export {result.export_seconds:.2f} s (allowance "
          f"{default_export_allowance(4.0):g} s), eval {(result.eval_seconds or 0):.2f} s")
    assert result.status != "ok" or result.val_bpb >= honest.val_bpb - 0.01, result


# ---------------------------------------------------------------- a write no op's schema declares
@needs_bwrap
def test_x_batch_norm_running_stats_are_a_buffer_write_and_refused(small_dataset, tmp_path):
    result, _ = slot(RED / "x_batch_norm_memory.py", small_dataset, tmp_path / "slot", static_checks=False,
                     budget_s=2.0)
    assert (result.status, result.reason) == ("failed", "bad_artifact"), result
    assert "changes its buffers" in result.detail and result.val_bpb is None


# ---------------------------------------------------------------- eval documents inside bwrap
@needs_bwrap
def test_x_a_corpus_that_copies_the_runtime_is_not_called_sealed(small_dataset, tmp_path):
    """The fixture's documents are heads of stdlib modules, which bwrap must show: the genome reads nearly all
    of the val split's text. No sandbox can hide the runtime, so the seal verdict must say unsealed (and a run
    on it must opt in with --allow-unsealed)."""
    genome = RED / "x_stdlib_copy.py"
    assert check_source(genome.read_text()) == []
    verdict = seal(small_dataset, "bwrap")
    assert not verdict.sealed and "copies the runtime" in verdict.why, verdict
    result, _ = slot(genome, small_dataset, tmp_path / "slot")
    assert ok(result), result
    recovered = (tmp_path / "slot" / "work" / "recovered.txt").read_bytes()
    val = small_dataset.tokens("val")
    text = np.asarray(small_dataset.text_tokens("val"), dtype=np.uint8).tobytes()
    pieces = [text[i:i + 200] for i in range(0, len(text) - 200, 200)]
    found = sum(p in recovered for p in pieces) / len(pieces)
    print(f"stdlib copy: {found:.1%} of {len(pieces)} 200-byte pieces of the val split ({len(val)} tokens) are in "
          f"the {len(recovered)} bytes read inside bwrap; seal: {verdict.why}")
    assert found > 0.5  # the attack works on this corpus: which is why it is not sealed
