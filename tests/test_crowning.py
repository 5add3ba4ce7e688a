"""Sequential crowning: P(better) on the pooled noise model, the crown / drop / re-evaluate rule on
synthetic streams whose true answer is known, and the rule driving a real run state and journal."""
import random
import sqlite3
import statistics
from pathlib import Path

import pytest

from evo import fitness as fit
from evo.run import JOURNAL_NAME
from tests.synthetic import add_child, fake, finish, new_run, resumed

SEED = Path(__file__).resolve().parent.parent / "genomes" / "tiny_cpu.py"


def test_p_better_is_one_half_at_equal_means_and_grows_with_the_gap_and_the_evaluations():
    assert fit.p_better(3.0, 3.0, 0.1, 2, 3, 10) == pytest.approx(0.5)
    assert fit.p_better(2.9, 3.0, 0.1, 1, 3, 10) < fit.p_better(2.8, 3.0, 0.1, 1, 3, 10)
    assert fit.p_better(2.9, 3.0, 0.1, 1, 3, 10) < fit.p_better(2.9, 3.0, 0.1, 4, 3, 10)
    assert fit.p_better(3.1, 3.0, 0.1, 4, 3, 10) < 0.5
    # a floor from few repeats is uncertain: the same gap is less convincing at 2 dof than at 200
    assert fit.p_better(2.8, 3.0, 0.1, 2, 3, 2) < fit.p_better(2.8, 3.0, 0.1, 2, 3, 200)


def test_decide_crowns_at_the_confidence_gives_up_below_one_half_or_at_the_limit():
    assert fit.decide(0.96, 2, 0.95, 5) == "crown"
    assert fit.decide(0.49, 2, 0.95, 5) == "drop"
    assert fit.decide(0.80, 2, 0.95, 5) == "reeval"
    assert fit.decide(0.80, 5, 0.95, 5) == "drop"


def _child(true_gap: float, rng: random.Random, floor: float = 1.0, seed_evals: int = 3) -> str:
    """One child through the rule, as the run state applies it: candidate at P >= 0.8 on its first
    evaluation, then one re-evaluation at a time until crowned or given up."""
    incumbent = statistics.fmean(rng.gauss(0.0, floor) for _ in range(seed_evals))
    vals = [rng.gauss(-true_gap, floor)]
    if fit.p_better(vals[0], incumbent, floor, 1, seed_evals, 30) < 0.8:
        return "evaluated"
    while True:
        vals.append(rng.gauss(-true_gap, floor))
        p = fit.p_better(statistics.fmean(vals), incumbent, floor, len(vals), seed_evals, 30)
        verdict = fit.decide(p, len(vals), 0.95, 5)
        if verdict != "reeval":
            return verdict


@pytest.mark.parametrize("gap, low, high", [(-1.0, 0.0, 0.01), (0.0, 0.02, 0.10), (3.0, 0.90, 1.0)])
def test_on_streams_with_known_answers_worse_is_almost_never_crowned_and_three_floors_better_almost_always(
        gap, low, high):
    rng = random.Random(7)
    crowned = statistics.fmean(_child(gap, rng) == "crown" for _ in range(3000))
    assert low <= crowned <= high, crowned


def _seeded_run(tmp_path, vals=(3.0, 3.1, 2.9), **overrides):
    evolution = new_run(tmp_path / "run", SEED, **{"noise_repeats": 3, **overrides})
    for val in vals:
        finish(evolution, evolution.next_evaluation(), fake(val=val))
    assert evolution.state.floor == pytest.approx(0.1)
    return evolution


def _child_row(evolution, k: int):
    source = SEED.read_text().replace("GRAD_CLIP = 1.0", f"GRAD_CLIP = {1.0 + k / 10}")
    return add_child(evolution, source, f"child {k}")


def test_a_candidate_is_re_evaluated_one_evaluation_at_a_time_until_the_evidence_crowns_it(tmp_path):
    evolution = _seeded_run(tmp_path)
    row = _child_row(evolution, 1)
    # the child's mean is shrunk toward the seed's (the prior before five children): P(better) 0.88 on one
    # evaluation makes it a candidate, not yet crowned
    finish(evolution, row, fake(val=2.70))
    rec = evolution.state.records[row.genome_id]
    assert rec.candidate and evolution.state.incumbent != row.genome_id
    first = evolution.next_evaluation()
    assert (first.genome_id, first.purpose) == (row.genome_id, "reeval")
    finish(evolution, first, fake(val=2.72))  # mean 2.71: P 0.93, still short of 0.95
    assert evolution.state.incumbent != row.genome_id and not rec.not_confirmed
    second = evolution.next_evaluation()
    assert (second.genome_id, second.purpose) == (row.genome_id, "reeval")
    assert evolution.journal.count_for(row.genome_id, "reeval") == 2
    finish(evolution, second, fake(val=2.68))  # mean 2.70 over 3 (and a tighter floor): P above 0.95
    assert evolution.state.incumbent == row.genome_id and rec.confirmed
    (event,) = evolution.journal.events("new_best")
    assert event["genome_id"] == row.genome_id and event["p_better"] >= 0.95


def test_a_candidate_whose_re_evaluation_falls_back_is_given_up_at_once(tmp_path):
    evolution = _seeded_run(tmp_path)
    row = _child_row(evolution, 2)
    finish(evolution, row, fake(val=2.70))
    finish(evolution, evolution.next_evaluation(), fake(val=3.40))  # mean 3.05: P < 0.5
    rec = evolution.state.records[row.genome_id]
    assert rec.not_confirmed and not rec.candidate
    assert [e["genome_id"] for e in evolution.journal.events("not_confirmed")] == [row.genome_id]
    assert evolution.journal.queued() == []


def test_a_candidate_is_given_up_at_max_candidate_evals(tmp_path):
    evolution = _seeded_run(tmp_path, max_candidate_evals=3)
    row = _child_row(evolution, 3)
    for k, val in enumerate((2.72, 2.85, 2.85)):  # P stays between 0.5 and 0.95 (0.87, 0.89, 0.949)
        finish(evolution, evolution.next_evaluation() if k else row, fake(val=val))
    rec = evolution.state.records[row.genome_id]
    assert len(rec.vals) == 3 and rec.not_confirmed and evolution.state.incumbent != row.genome_id


def test_a_resume_re_queues_the_next_re_evaluation_a_crash_lost(tmp_path):
    evolution = _seeded_run(tmp_path)
    row = _child_row(evolution, 4)
    finish(evolution, row, fake(val=2.70))
    finish(evolution, evolution.next_evaluation(), fake(val=2.72))
    queued = evolution.journal.queued()
    assert [(e.genome_id, e.purpose) for e in queued] == [(row.genome_id, "reeval")]
    with sqlite3.connect(tmp_path / "run" / JOURNAL_NAME) as db:  # the crash lost the queued follow-up
        db.execute("DELETE FROM evaluations WHERE state = 'queued'")
    again = resumed(tmp_path / "run")
    assert [(e.genome_id, e.purpose) for e in again.journal.queued()] == [(row.genome_id, "reeval")]
    assert again.journal.count_for(row.genome_id, "reeval") == 2  # one done, one queued: not three


def test_the_prior_shrinks_a_lucky_first_evaluation_toward_what_the_runs_children_score(tmp_path):
    evolution = _seeded_run(tmp_path)
    state = evolution.state
    assert state.children_prior() == (pytest.approx(3.0), pytest.approx(0.01))  # before five children: the seed's
    for k, val in enumerate((3.5, 3.6, 3.4, 3.7, 3.3)):  # children that mostly make things worse
        finish(evolution, _child_row(evolution, 10 + k), fake(val=val))
    centre, variance = state.children_prior()
    assert centre == pytest.approx(3.5) and variance == pytest.approx(max((1.4826 * 0.1) ** 2 - 0.01, 0.0025))
    lucky = _child_row(evolution, 20)
    finish(evolution, lucky, fake(val=2.80))
    plain, shrunk = state.p_better(lucky.genome_id, shrink=False), state.p_better(lucky.genome_id)
    # screening is on the plain P (0.89: a candidate, worth a re-evaluation); the crown waits for the shrunk
    # one, which counts the first evaluation's luck against what this run's children score
    assert plain == pytest.approx(fit.p_better(2.80, 3.0, 0.1, 1, 3, 2)) and plain > 0.8
    assert state.records[lucky.genome_id].candidate and shrunk < plain - 0.1

