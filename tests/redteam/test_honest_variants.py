"""Honest genomes must never be flagged or rejected: the other half of the red team's claims.

Each genome in tests/redteam/honest/ is a legitimate training script that differs from the seed
genomes in a way a guard could mistake for gaming: width and depth, optimizer (SGD with momentum,
Adam, AdamW, Adagrad, RMSprop, NAdam, RAdam, Adamax), schedule (cosine, constant, linear decay, step,
exponential, one-cycle, warmup, clock-driven), attention pattern (full causal, a causal banded
sliding window, explicit additive masks, none), positions (rotary, learned absolute, ALiBi-style
bias, none), causal convolutions and prefix means (the causal twins of the red team's look-ahead
features), dropout, tied embeddings, seeds derived from run.seed, and torch.compile. Each runs
through run_slot with the static checks ON under the default sandbox and must end `ok` with no
static finding and every probe passing (causality, canary, stateless, budget).
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from gpt import sandbox
from gpt.runner import SlotJob, run_slot

HONEST = sorted((Path(__file__).resolve().parent / "honest").glob("h*.py"))


def test_there_are_at_least_ten_honest_variants():
    assert len(HONEST) >= 10, [p.name for p in HONEST]


@pytest.mark.slow
@pytest.mark.parametrize("genome", HONEST, ids=[p.stem for p in HONEST])
def test_an_honest_variant_is_scored_ok_with_no_finding_and_every_probe_passing(genome, small_dataset, tmp_path):
    result = run_slot(SlotJob(genome=str(genome), dataset=str(small_dataset.path), out_dir=str(tmp_path / "slot"),
                              budget_s=4.0, grace_s=30.0, eval_tokens=4096, threads=1, seed=1234))
    assert (result.status, result.reason) == ("ok", None), result.stderr_tail or result
    assert result.static_findings == []
    assert result.sandbox == sandbox.resolve_level("auto")
    for probe in ("causality", "canary", "stateless", "budget"):
        assert result.probes[probe]["pass"], (probe, result.probes[probe])
    assert result.leftover_processes == 0
    assert math.isfinite(result.val_bpb) and result.steps and result.steps > 0
