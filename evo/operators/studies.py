"""Knob studies: model-based search over one structure's typed knob space (evo/operators/space.py).

A `Study` is what the run knows of one structure: every evaluated configuration (a `Trial`) in the
order the run folded them, with its score (mean val_bpb plus penalty, lower is better) or its
failure. The breeder builds it from the run state for each proposal, so an operator holds no state
of its own and a resumed run, whose state is replayed from the journal, proposes exactly what the
uninterrupted run would have (each proposal also draws from its own random stream).

Operators (same calling convention as every operator, see evo/operators/__init__.py):
- `TPESearch`: Optuna's TPE sampler, asked through its ask/tell interface over a study rebuilt from
  the trials. Until a structure has STARTUP_TRIALS scored trials (a new structure from an LLM edit
  starts with one, its parent's values) it steps locally around the structure's best instead.
- `GPSearch`: Optuna's Gaussian-process sampler (Matern 5/2 with a learned noise term, log expected
  improvement), the same way: the sample-efficient choice for a few dozen evaluations of a smooth,
  noisy landscape.
- `CMAESSearch`: DEAP's CMA-ES over the unit embedding, its state replayed from the trials in
  batches of its population size (ints and choices rounded on the way out).
All keep away from failures: a proposal within FAILURE_RADIUS (unit embedding, every dimension) of
a configuration that failed (out of memory, a crash, a timeout) is drawn again.
"""
from __future__ import annotations

import math
import random
import threading
import warnings
from dataclasses import dataclass

import numpy as np
from deap import base

from evo.genome import Genome, OperatorContext, OperatorFailure, ParentInfo
from evo.operators.knobs import describe
from evo.operators.space import KnobSpace, write_values

STARTUP_TRIALS = 5  # scored trials of a structure before TPE models it
LOCAL_SIGMA = 0.12  # a local step: N(0, 0.12) per dimension in the unit embedding
CMA_SIGMA = 0.2  # CMA-ES's initial step size in the unit embedding
FAILURE_RADIUS = 0.08  # proposals this close to a failed configuration (every dimension) are redrawn
ATTEMPTS = 30
_TORCH_THREADS = threading.Lock()  # GP proposals pin torch to one thread, one proposal at a time


@dataclass(frozen=True)
class Trial:
    """One evaluated configuration of a structure. score: mean val_bpb + penalty (None: failed), what
    the models minimize, as selection does; val_mean: the val mean alone, all a prompt may show (the
    penalty comes from the held-out split's Thresholdout answer)."""

    genome_id: str
    values: dict
    score: float | None
    n_evals: int = 1
    failure: str | None = None
    val_mean: float | None = None


@dataclass(frozen=True)
class Study:
    """The trials of one structure, oldest first, and its space."""

    structure: str
    space: KnobSpace
    trials: tuple[Trial, ...]
    noise_floor: float | None = None

    @property
    def scored(self) -> list[Trial]:
        return [t for t in self.trials if t.score is not None]

    def best(self, k: int = 1) -> list[Trial]:
        return sorted(self.scored, key=lambda t: t.score)[:k]

    def near_failure(self, values: dict) -> bool:
        return any(self.space.distance(values, t.values) < FAILURE_RADIUS for t in self.trials if t.failure)

    def seen(self, values: dict) -> bool:
        return any(t.values == values for t in self.trials)

    def failure_score(self) -> float:
        """What a failed trial counts as for the models: worse than anything scored."""
        scores = [t.score for t in self.scored]
        return (max(scores) if scores else 10.0) + 10 * (self.noise_floor or 0.1)


def _acceptable(study: Study, values: dict) -> bool:
    return not study.near_failure(values) and not study.seen(values)


def local_step(study: Study, rng: random.Random) -> dict:
    """A configuration near the study's best (or its first trial): Gaussian steps in the unit embedding."""
    centre = (study.best() or list(study.trials))[0].values
    point = study.space.to_unit(centre)
    for _ in range(ATTEMPTS):
        values = study.space.from_unit([u + rng.gauss(0.0, LOCAL_SIGMA) for u in point])
        if _acceptable(study, values):
            return values
    raise OperatorFailure("every local step landed on a known configuration or near a failure")


def _tpe_sampler(seed: int):
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=0, multivariate=True, constant_liar=True)


def _gp_sampler(seed: int):
    import optuna

    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=0)


def propose_optuna(study: Study, rng: random.Random, make_sampler) -> dict:
    """The next configuration of an Optuna sampler over this study (rebuilt from its trials through
    ask/tell), or a local step while the study has fewer than STARTUP_TRIALS scored trials."""
    if len(study.scored) < STARTUP_TRIALS:
        return local_step(study, rng)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space, distributions = study.space, study.space.distributions()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optimizer = optuna.create_study(direction="minimize", sampler=make_sampler(rng.getrandbits(31)))
        bad = study.failure_score()
        optimizer.add_trials([optuna.trial.create_trial(params=space.to_params(t.values), distributions=distributions,
                                                        value=t.score if t.score is not None else bad)
                              for t in study.trials])
        for _ in range(ATTEMPTS):
            trial = optimizer.ask(distributions)
            values = space.from_params(trial.params)
            if _acceptable(study, values):
                return values
            optimizer.tell(trial, bad)  # a region to leave: the next ask moves away
    return local_step(study, rng)


def propose_tpe(study: Study, rng: random.Random) -> dict:
    """Optuna TPE's next configuration for this study."""
    return propose_optuna(study, rng, _tpe_sampler)


def propose_gp(study: Study, rng: random.Random) -> dict:
    """Optuna's Gaussian-process sampler's next configuration for this study. Its fit runs on torch,
    with one thread: the controller shares its machine with the slots that train."""
    import torch

    with _TORCH_THREADS:  # the setting is process-wide; with an LLM, proposals run in several threads
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return propose_optuna(study, rng, _gp_sampler)
        finally:
            torch.set_num_threads(threads)


class _Point(list):
    """A point of the unit embedding with the fitness DEAP's CMA-ES ranks by."""

    def __init__(self, point, score: float):
        super().__init__(point)
        self.fitness = _KnobFitness((score,))


class _KnobFitness(base.Fitness):
    """A study score: lower is better."""
    weights = (-1.0,)


def cma_strategy(study: Study, by: str = "score"):
    """DEAP's CMA-ES strategy, started at the study's first trial (the structure's root) and updated
    with the trials in order, one population (lambda_ trials) at a time, ranked by `by` ("score", or
    "val_mean" for what a prompt may show)."""
    from deap import cma

    space = study.space
    strategy = cma.Strategy(centroid=space.to_unit(study.trials[0].values), sigma=CMA_SIGMA)
    bad = study.failure_score()
    batch = []
    for t in study.trials:
        value = getattr(t, by)
        batch.append(_Point(space.to_unit(t.values), value if value is not None else bad))
        if len(batch) == strategy.lambda_:
            strategy.update(batch)
            batch = []
    return strategy


def propose_cmaes(study: Study, rng: random.Random) -> dict:
    strategy = cma_strategy(study)
    noise = np.random.default_rng(rng.getrandbits(63))
    for _ in range(ATTEMPTS):
        point = strategy.centroid + strategy.sigma * strategy.BD @ noise.standard_normal(strategy.dim)
        values = study.space.from_unit(np.clip(point, 0.0, 1.0))
        if _acceptable(study, values):
            return values
    return local_step(study, rng)


def cma_summary(study: Study) -> dict:
    """CMA-ES's mean (as knob values) and per-knob step size (unit embedding), for prompts: replayed
    on val means, so nothing in it derives from the held-out split."""
    strategy = cma_strategy(study, by="val_mean")
    steps = strategy.sigma * np.sqrt(np.diag(strategy.C))
    return {"mean": study.space.from_unit(np.clip(strategy.centroid, 0, 1)),
            "step": {d.name: round(float(s), 3) for d, s in zip(study.space.dimensions, steps)},
            "updates": strategy.update_count}


class _StudyOperator:
    arity = 1
    name = ""

    def propose(self, study: Study, rng: random.Random) -> dict:
        raise NotImplementedError

    def __call__(self, parents: list[ParentInfo], rng: random.Random,
                 context: OperatorContext | None = None) -> Genome:
        study = context.study if context is not None else None
        if study is None or not study.space.dimensions or not study.trials:
            raise OperatorFailure(f"{self.name}: the parent has no knob study (no searchable knobs or no "
                                  "evaluated configuration of its structure)")
        parent = parents[0].genome
        source, changes = write_values(parent.source, self.propose(study, rng))
        return Genome(source=source, parents=(parent.id,), operator=self.name, rationale=describe(changes))


class TPESearch(_StudyOperator):
    """Arity 1: the next configuration of the parent's structure by TPE (Optuna)."""
    name = "tpe"

    def propose(self, study: Study, rng: random.Random) -> dict:
        return propose_tpe(study, rng)


class GPSearch(_StudyOperator):
    """Arity 1: the next configuration of the parent's structure by Gaussian-process BO (Optuna)."""
    name = "gp"

    def propose(self, study: Study, rng: random.Random) -> dict:
        return propose_gp(study, rng)


class CMAESSearch(_StudyOperator):
    """Arity 1: the next configuration of the parent's structure by CMA-ES (DEAP)."""
    name = "cmaes"

    def propose(self, study: Study, rng: random.Random) -> dict:
        return propose_cmaes(study, rng)


def study_text(study: Study, top: int = 5, last: int = 10, with_cma: bool = True) -> str:
    """The study's state in words, for the LLM prompt: the space, the best configurations by val mean
    with their intervals, the last trials, CMA-ES's mean and step sizes. Val means only: nothing here
    derives from the held-out or test splits."""
    def config(values):
        return ", ".join(f"{k}={v!r}" for k, v in values.items())

    floor = study.noise_floor
    measured = [t for t in study.trials if t.val_mean is not None]
    lines = [f"Knob study of this structure ({len(study.trials)} trials, {len(measured)} with a val mean):",
             "space: " + "; ".join(d.describe() for d in study.space.dimensions)]
    for t in sorted(measured, key=lambda t: t.val_mean)[:top]:
        half = f" +- {2 * floor / math.sqrt(t.n_evals):.4f}" if floor else ""
        lines.append(f"best: val_bpb {t.val_mean:.4f}{half} over {t.n_evals} eval(s): {config(t.values)}")
    for t in list(study.trials)[-last:]:
        outcome = "failed: " + t.failure if t.failure else "not scored yet" if t.val_mean is None else \
            f"val_bpb {t.val_mean:.4f}"
        lines.append(f"trial: {outcome}: {config(t.values)}")
    if with_cma and len(study.trials) >= 2:
        summary = cma_summary(study)
        lines.append(f"CMA-ES mean after {summary['updates']} update(s): {config(summary['mean'])}")
        lines.append("CMA-ES step per knob (share of its range): "
                     + ", ".join(f"{k}={v}" for k, v in summary["step"].items()))
    return "\n".join(lines)
