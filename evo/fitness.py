"""Fitness under noise: the noise floor, Thresholdout on the held-out split, and the penalty.

fitness = -mean(val_bpb) - penalty

The held-out split reaches fitness only through Thresholdout (Dwork et al., "The
reusable holdout: Preserving validity in adaptive data analysis", Science 2015). Each
query compares a genome's val mean with its calibrated held-out mean:

    gap = (heldout_mean - offset) - val_mean       # offset: the seed's own heldout - val
    if |gap| > threshold + gamma + Lap(2 * noise):  # gamma ~ Lap(noise), redrawn after each reveal
        answer = val_mean + gap + Lap(noise)         # a reveal: spends one unit of budget
    else:
        answer = val_mean                            # the held-out split says nothing new
    penalty = weight * max(0, answer - val_mean - noise_floor)

Defaults derive from the measured noise floor: threshold = 2 x floor, noise = floor / 2.
When the budget is spent, every answer is the val value (no more reveals).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

import numpy as np

WORST_FITNESS = float("-inf")


def noise_floor(val_bpbs: list[float], minimum: float = 0.0) -> float:
    """The spread (sample standard deviation) of the seed's val_bpb over fresh harness seeds."""
    if len(val_bpbs) < 2:
        return minimum
    return max(statistics.stdev(val_bpbs), minimum)


def pooled_noise_floor(groups: list[list[float]], minimum: float = 0.0) -> tuple[float, int]:
    """(floor, degrees of freedom): the within-genome standard deviation pooled over every group of
    repeated evaluations, sqrt(sum of squared deviations from each group's mean / sum of (n - 1))."""
    ss, dof = 0.0, 0
    for vals in groups:
        vals = [v for v in vals if v is not None and math.isfinite(v)]  # the runner never passes others on
        if len(vals) >= 2:
            m = statistics.fmean(vals)
            ss += sum((v - m) ** 2 for v in vals)
            dof += len(vals) - 1
    return (max((ss / dof) ** 0.5, minimum) if dof else minimum), dof


def shrunk(mean: float, n: int, floor: float, prior: tuple[float, float] | None) -> tuple[float, float]:
    """(posterior mean, posterior variance) of a genome's true score from the mean of its n
    evaluations (noise variance floor^2 each) under a normal prior (mean, variance); None: no prior."""
    noise = floor ** 2 / max(n, 1)
    if prior is None or prior[1] <= 0:
        return mean, noise
    prior_mean, prior_var = prior
    precision = 1 / prior_var + 1 / noise
    return (prior_mean / prior_var + mean / noise) / precision, 1 / precision


def p_better(candidate: float, incumbent: float, floor: float, n_candidate: int, n_incumbent: int,
             dof: int, prior_candidate: tuple | None = None, prior_incumbent: tuple | None = None) -> float:
    """The probability that the candidate's true score is below (better than) the incumbent's, given
    their means over n evaluations each and the pooled noise model: the difference of the posterior
    means over its standard error, read on Student's t with the floor's degrees of freedom (a floor
    from few repeats is itself uncertain, so the tails are wider). A prior (see
    `RunState.children_prior`) shrinks a child's mean toward what children of this run score: the
    luck that made a child a candidate does not count as evidence."""
    from scipy.stats import t as student

    mc, vc = shrunk(candidate, n_candidate, floor, prior_candidate)
    mi, vi = shrunk(incumbent, n_incumbent, floor, prior_incumbent)
    se = math.sqrt(vc + vi)
    if se <= 0:
        return 1.0 if mc < mi else 0.0
    return float(student.cdf((mi - mc) / se, max(dof, 1)))


def decide(p: float, n_evals: int, confidence: float, max_evals: int, p_keep: float | None = None) -> str:
    """The sequential rule for a candidate after one more evaluation: "crown" once P(better) reaches
    the confidence; "drop" once its mean is no longer likely better (p_keep, by default P, below
    0.5) or it has max_evals evaluations; else "reeval" (one more evaluation)."""
    if p >= confidence:
        return "crown"
    keep = p if p_keep is None else p_keep
    return "drop" if keep < 0.5 or n_evals >= max_evals else "reeval"


def interval(mean: float, n: int, floor: float | None, dof: int, confidence: float = 0.95) -> tuple[float, float]:
    """The two-sided interval of a genome's mean under the pooled noise model (t with the floor's dof)."""
    from scipy.stats import t as student

    if floor is None or n < 1 or mean is None:
        return (math.nan, math.nan)
    half = float(student.ppf(0.5 + confidence / 2, max(dof, 1))) * floor / math.sqrt(n)
    return (mean - half, mean + half)


@dataclass
class ThresholdoutState:
    """Everything needed to continue Thresholdout exactly after a resume."""

    threshold: float
    noise: float
    budget: int
    spent: int = 0
    queries: int = 0
    gamma: float = 0.0


class Thresholdout:
    """The reusable holdout. Randomness is derived from (seed, query index), so a resumed
    run draws exactly the noise it would have drawn."""

    def __init__(self, state: ThresholdoutState, seed: int = 0):
        self.state = state
        self.seed = seed
        if state.queries == 0 and state.spent == 0 and state.gamma == 0.0:
            state.gamma = self._laplace(state.noise, "gamma", 0)

    def _laplace(self, scale: float, what: str, index: int) -> float:
        if scale <= 0:
            return 0.0
        tag = {"gamma": 1, "eta": 2, "xi": 3}[what]
        return float(np.random.default_rng([self.seed, tag, index]).laplace(0.0, scale))

    @property
    def exhausted(self) -> bool:
        return self.state.spent >= self.state.budget

    def answer(self, val: float, heldout: float) -> tuple[float, bool]:
        """The answer for one query and whether it was a reveal (which spends budget)."""
        s = self.state
        index = s.queries
        s.queries += 1
        if self.exhausted:
            return val, False
        eta = self._laplace(2 * s.noise, "eta", index)
        if abs(heldout - val) > s.threshold + s.gamma + eta:
            s.spent += 1
            s.gamma = self._laplace(s.noise, "gamma", index + 1)
            return heldout + self._laplace(s.noise, "xi", index), True
        return val, False

    def to_dict(self) -> dict:
        return asdict(self.state)


def make_thresholdout(floor: float, threshold: float, noise: float, budget: int, seed: int) -> Thresholdout:
    """Thresholdout with config values, where 0 means 'derive from the noise floor'."""
    return Thresholdout(ThresholdoutState(threshold=threshold or 2 * floor, noise=noise or floor / 2,
                                          budget=budget), seed=seed)


def penalty(answer: float, val_mean: float, floor: float, weight: float) -> float:
    """Grows with the answered gap beyond the noise floor; zero when Thresholdout answers val."""
    return weight * max(0.0, answer - val_mean - floor)


def fitness(val_mean: float, pen: float) -> float:
    if val_mean is None or not math.isfinite(val_mean) or pen is None or not math.isfinite(pen):
        return WORST_FITNESS
    return -val_mean - pen
