"""Thresholdout (the reusable holdout), the noise floor and the penalty, on synthetic val/held-out streams."""
from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from evo import fitness as fit
from evo.fitness import Thresholdout, ThresholdoutState

NOISE = 0.01
THRESHOLD = 0.3  # 15 noise-comparison scales (Lap(2 x NOISE)): the inside/outside verdicts are certain
FAR = 2.0      # a gap far outside threshold + noise: always revealed
NEAR = 0.001   # a gap far inside the threshold: never revealed


def make(budget: int = 10_000, seed: int = 0, threshold: float = THRESHOLD, noise: float = NOISE) -> Thresholdout:
    return Thresholdout(ThresholdoutState(threshold=threshold, noise=noise, budget=budget), seed=seed)


def stream(n: int, gap_of, seed: int = 1) -> list[tuple[float, float]]:
    """(val, heldout) pairs: val around 3 bpb, heldout = val + gap_of(i)."""
    rng = np.random.default_rng(seed)
    vals = 3.0 + 0.05 * rng.standard_normal(n)
    return [(float(v), float(v + gap_of(i))) for i, v in enumerate(vals)]


def ask(t: Thresholdout, pairs) -> list[tuple[float, bool, int]]:
    """(answer, revealed, budget spent by this query) for each pair."""
    out = []
    for val, held in pairs:
        before = t.state.spent
        answer, revealed = t.answer(val, held)
        out.append((answer, revealed, t.state.spent - before))
    return out


def test_inside_the_threshold_the_answer_is_exactly_val_and_spends_nothing():
    t = make()
    pairs = stream(500, lambda i: NEAR * (-1) ** i)
    for (val, _), (answer, revealed, spent) in zip(pairs, ask(t, pairs)):
        assert answer == val  # exactly, not approximately
        assert not revealed and spent == 0
    assert t.state.spent == 0 and t.state.queries == 500


def test_outside_the_threshold_the_answer_is_heldout_plus_laplace_noise_and_spends_one_unit():
    t = make()
    pairs = stream(4000, lambda i: FAR if i % 2 else -FAR)
    answers = ask(t, pairs)
    assert all(revealed and spent == 1 for _, revealed, spent in answers)
    assert t.state.spent == len(pairs)
    errors = np.array([answer - held for (_, held), (answer, _, _) in zip(pairs, answers)])
    assert not np.any(errors == 0.0), "a revealed answer carries noise"
    # Laplace(0, b): mean 0, mean absolute deviation b, standard deviation sqrt(2) b
    assert abs(errors.mean()) < 4 * math.sqrt(2) * NOISE / math.sqrt(len(errors))
    assert np.abs(errors).mean() == pytest.approx(NOISE, rel=0.1)
    assert errors.std() == pytest.approx(math.sqrt(2) * NOISE, rel=0.15)
    # far from val: the answer tells the held-out value, not the val value
    for (val, held), (answer, _, _) in zip(pairs, answers):
        assert abs(answer - held) < abs(answer - val)


def test_a_mixed_stream_reveals_exactly_the_far_gaps():
    t = make()
    pairs = stream(300, lambda i: FAR if i % 3 == 0 else NEAR)
    answers = ask(t, pairs)
    for i, ((val, _), (answer, revealed, spent)) in enumerate(zip(pairs, answers)):
        if i % 3 == 0:
            assert revealed and spent == 1 and answer != val
        else:
            assert not revealed and spent == 0 and answer == val
    assert t.state.spent == 100


def test_gaps_near_the_threshold_are_revealed_sometimes_by_the_noisy_comparison():
    """|gap| is compared with threshold + Lap(noise) + Lap(2 noise): the edge is soft, not a hard cut."""
    t = make()
    answers = ask(t, stream(2000, lambda i: THRESHOLD))
    share = sum(revealed for _, revealed, _ in answers) / len(answers)
    assert 0.2 < share < 0.8


def test_when_the_budget_is_spent_answers_are_val_and_nothing_more_is_spent():
    t = make(budget=5)
    pairs = stream(50, lambda i: FAR)
    answers = ask(t, pairs)
    assert [revealed for _, revealed, _ in answers[:5]] == [True] * 5
    for (val, _), (answer, revealed, spent) in zip(pairs[5:], answers[5:]):
        assert answer == val and not revealed and spent == 0
    assert t.exhausted and t.state.spent == 5 and t.state.queries == 50


def test_a_zero_budget_never_reveals():
    t = make(budget=0)
    pairs = stream(20, lambda i: FAR)
    assert all(answer == val and not revealed for (val, _), (answer, revealed, _) in zip(pairs, ask(t, pairs)))
    assert t.state.spent == 0


def test_the_same_seed_gives_the_same_answers_and_another_seed_other_noise():
    pairs = stream(200, lambda i: FAR if i % 2 else THRESHOLD)
    a, b, c = ask(make(seed=7), pairs), ask(make(seed=7), pairs), ask(make(seed=8), pairs)
    assert a == b
    assert a != c


def test_a_state_restored_from_to_dict_continues_exactly_like_the_original():
    """What a resumed run relies on: no noise is redrawn, the budget and gamma carry over."""
    pairs = stream(120, lambda i: (FAR, THRESHOLD, NEAR)[i % 3])
    original = make(budget=30, seed=3)
    first = ask(original, pairs[:60])
    saved = original.to_dict()
    assert saved["queries"] == 60 and saved["spent"] > 0
    restored = Thresholdout(ThresholdoutState(**saved), seed=3)
    assert restored.to_dict() == saved  # restoring draws nothing
    rest_original, rest_restored = ask(original, pairs[60:]), ask(restored, pairs[60:])
    assert rest_restored == rest_original
    assert restored.to_dict() == original.to_dict()
    # and both equal one uninterrupted run
    assert first + rest_original == ask(make(budget=30, seed=3), pairs)


def test_make_thresholdout_derives_threshold_and_noise_from_the_floor_when_given_zero():
    t = fit.make_thresholdout(floor=0.04, threshold=0.0, noise=0.0, budget=7, seed=1)
    assert (t.state.threshold, t.state.noise, t.state.budget) == (0.08, 0.02, 7)
    t = fit.make_thresholdout(floor=0.04, threshold=0.5, noise=0.1, budget=7, seed=1)
    assert (t.state.threshold, t.state.noise) == (0.5, 0.1)


# ---------------------------------------------------------------- penalty and fitness
def test_the_penalty_is_zero_when_the_answer_is_val():
    assert fit.penalty(3.0, 3.0, floor=0.05, weight=1.0) == 0.0


def test_the_penalty_is_zero_within_the_noise_floor_and_for_a_better_heldout():
    assert fit.penalty(3.04, 3.0, floor=0.05, weight=1.0) == 0.0
    assert fit.penalty(2.5, 3.0, floor=0.05, weight=1.0) == 0.0


def test_the_penalty_grows_with_the_gap_beyond_the_noise_floor_times_the_weight():
    gaps = [0.06, 0.1, 0.2, 0.5]
    penalties = [fit.penalty(3.0 + g, 3.0, floor=0.05, weight=2.0) for g in gaps]
    assert penalties == pytest.approx([2.0 * (g - 0.05) for g in gaps])
    assert all(a < b for a, b in zip(penalties, penalties[1:]))


def test_fitness_is_minus_val_minus_penalty_and_worst_when_val_is_not_finite():
    assert fit.fitness(3.0, 0.25) == -3.25
    assert fit.fitness(float("nan"), 0.0) == fit.WORST_FITNESS
    assert fit.fitness(float("inf"), 0.0) == fit.WORST_FITNESS
    assert fit.fitness(None, 0.0) == fit.WORST_FITNESS


# ---------------------------------------------------------------- noise floor
def test_the_noise_floor_is_the_sample_standard_deviation():
    values = [3.01, 2.98, 3.05, 2.96]
    assert fit.noise_floor(values) == pytest.approx(statistics.stdev(values))


def test_the_noise_floor_never_goes_below_its_minimum():
    assert fit.noise_floor([3.0, 3.0, 3.0], minimum=0.002) == 0.002
    assert fit.noise_floor([3.0, 3.5], minimum=0.002) == pytest.approx(statistics.stdev([3.0, 3.5]))


def test_the_noise_floor_of_fewer_than_two_values_is_the_minimum():
    assert fit.noise_floor([], minimum=0.01) == 0.01
    assert fit.noise_floor([3.0], minimum=0.01) == 0.01


