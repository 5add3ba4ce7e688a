"""The run state: what a run knows, folded from its finished evaluations, and nothing else.

`RunState.fold(evaluation, result)` turns one slot result into scores (the Thresholdout answer,
the penalty, the fitness) and `Event`s (a candidate to re-evaluate, a new best, the noise floor,
a starved slot to run again). It writes nothing: the scheduler journals the scores and acts on
the events, and `RunState.replay(journal)` rebuilds the same state from the journal alone, which
is all `evo status`, `show` and `export` need (no operators, no LLM client, no scheduler).
"""
from __future__ import annotations

import statistics
import threading
from dataclasses import dataclass, field

from deap import base, creator

from evo import fitness as fit
from evo.config import RunConfig
from evo.genome import ParentInfo
from evo.journal import Evaluation, Journal
from gpt.result import SlotResult

MAX_CONTENDED_RERUNS = 2  # per genome: past this a starved evaluation is folded in (the machine stays busy)
CONTENDED_CPU_RATIO = 0.5  # below this share of the genome's median CPU seconds an evaluation was starved
RERUN_PURPOSE = {"child": "rerun"}  # a child's re-run must not count as a new child
IMPLAUSIBLE_AFTER = 5  # children folded before the floor is compared with their spread
PRIOR_AFTER = 5  # children's first evaluations before the crowning prior is fitted to them


class Member:
    """A population member: a genome id. Its length is the code size used for parsimony."""

    def __init__(self, genome_id: str, length: int):
        self.genome_id = genome_id
        self.length = length


if not hasattr(creator, "EvoFitness"):
    # Two values compared lexicographically: fitness first, then shorter code (weight -1)
    # breaks exact ties: autoresearch's simplicity criterion inside the tournament (evo/breeding.py).
    creator.create("EvoFitness", base.Fitness, weights=(1.0, -1.0))
    creator.create("EvoIndividual", Member, fitness=creator.EvoFitness)


def new_member(genome_id: str, length: int):
    return creator.EvoIndividual(genome_id, length)


@dataclass(frozen=True)
class Event:
    """Something a fold found out. Kinds: noise_floor, reeval, new_best, not_confirmed, contended,
    implausible_floor, holdout_exhausted, seed_failure."""

    kind: str
    genome_id: str | None = None
    data: dict = field(default_factory=dict)


@dataclass
class GenomeRecord:
    """What the run knows of a genome, folded from its evaluations."""

    n_folded: int = 0
    vals: list = field(default_factory=list)
    heldouts: list = field(default_factory=list)
    flagged: str | None = None
    failed: str | None = None
    fitness: float = fit.WORST_FITNESS
    penalty: float = 0.0
    answer: float | None = None
    revealed: int = 0  # Thresholdout reveals this genome's queries spent
    last_revealed: bool = False  # whether its latest query was a reveal
    candidate: bool = False
    confirmed: bool = False
    not_confirmed: bool = False  # was a candidate; its re-evaluation did not confirm it
    train_seconds: float | None = None
    steps: int | None = None
    params: int | None = None  # as the genome printed it (informational)
    train_loss: float | None = None  # as the genome printed it (informational)
    cpu_seconds: list = field(default_factory=list)  # the runner's CPU measurement of each folded evaluation
    reruns: dict = field(default_factory=dict)  # purpose -> evaluations re-run because they were contended
    reevals: int = 0  # re-evaluations asked for (a candidate gets one at a time)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.vals) if self.vals else None


def _status_word(rec: GenomeRecord | None, result: SlotResult | None) -> str:
    """A child's standing in words, for prompts: confirmed, not confirmed, candidate, flagged, failed, ok."""
    if result is None or (rec is None and result.status == "ok"):
        return "ok"
    if rec is not None and rec.flagged:
        return f"flagged: {rec.flagged}"
    if rec is not None and rec.failed:
        return f"failed: {rec.failed}"
    if result.status != "ok":
        return f"{result.status}: {result.reason}"
    if rec.confirmed:
        return "confirmed"
    if rec.not_confirmed:
        return "not confirmed"
    return "candidate" if rec.candidate else "ok"


def contended(rec: GenomeRecord, result: SlotResult) -> bool:
    """A slot that was starved: the runner saw its processes get too little CPU, or far less CPU time
    than the same genome's other evaluations. Its score says more about the machine than the genome."""
    if result.contended:
        return True
    mine = [c for c in rec.cpu_seconds if c]
    cpu = result.cpu_seconds
    return bool(cpu and len(mine) >= 2 and cpu < CONTENDED_CPU_RATIO * statistics.median(mine))


class RunState:
    """Records per genome, the noise floor, Thresholdout, the population and the incumbent."""

    def __init__(self, config: RunConfig, journal: Journal):
        self.config, self.journal = config, journal  # the journal is only read here
        self.lock = threading.RLock()  # held by fold and by a proposal's reading (the breeder's threads)
        self.seed_ids: list[str] = journal.get_meta("seeds", [])
        self.records: dict[str, GenomeRecord] = {}
        self.last_child_failure: dict[str, tuple[str, str]] = {}
        self.population: list = []
        self.floor: float | None = None
        self.floor_dof = 0  # degrees of freedom behind the floor: its relative error is about 1/sqrt(2 dof)
        self.floor_warned = False
        self.offset = 0.0
        self.thresholdout: fit.Thresholdout | None = None
        self.incumbent: str | None = None
        self.pending: list[str] = []  # child results that arrived before the noise floor was known
        self.seed_failure: str | None = None

    @classmethod
    def replay(cls, config: RunConfig, journal: Journal) -> tuple["RunState", list[Event]]:
        """The state rebuilt from the journal, in completion order, and the events the folds produced
        (a resumed scheduler re-applies their follow-ups, which are idempotent)."""
        state, events = cls(config, journal), []
        for evaluation in journal.done_evaluations():
            events += state.fold(evaluation, evaluation.result or SlotResult(status="failed"))[1]
        return state, events

    # ------------------------------------------------------------ read-only views
    @property
    def best(self) -> GenomeRecord | None:
        return self.records.get(self.incumbent) if self.incumbent else None

    @property
    def seed(self) -> GenomeRecord | None:
        return self.records.get(self.seed_ids[0]) if self.seed_ids else None

    def parent_info(self, genome_id: str) -> ParentInfo:
        rec = self.records.get(genome_id) or GenomeRecord()
        return ParentInfo(genome=self.journal.genome(genome_id), mean_val_bpb=rec.mean, n_evals=len(rec.vals),
                          noise_floor=self.floor, train_seconds=rec.train_seconds, steps=rec.steps,
                          params=rec.params, train_loss=rec.train_loss,
                          last_child_failure=self.last_child_failure.get(genome_id))

    def history(self, n: int) -> tuple[dict, ...]:
        """The last n evaluated children: public facts only (no held-out values, no probe internals).
        `delta_val_bpb` is the child's mean against its first parent's mean, `n_evals` how many
        evaluations the child's mean has, and `status` says whether it was confirmed."""
        rows = []
        for evaluation in self.journal.recent_children(n):
            genome, result = self.journal.genome(evaluation.genome_id), evaluation.result
            rec = self.records.get(evaluation.genome_id)
            parent = self.records.get(genome.parents[0]) if genome.parents else None
            mean = rec.mean if rec and rec.mean is not None else (result.val_bpb if result else None)
            delta = (mean - parent.mean) if (mean is not None and parent and parent.mean is not None) else None
            rows.append({"child": evaluation.genome_id, "operator": genome.operator,
                         "idea": genome.rationale.splitlines()[0] if genome.rationale else "",
                         "delta_val_bpb": delta, "n_evals": len(rec.vals) if rec else 0,
                         "status": _status_word(rec, result)})
        return tuple(rows)

    def summary(self) -> dict:
        seed, best = self.seed, self.best
        return {"evaluations": self.journal.count_done(), "noise_floor": self.floor,
                "seed_mean_val_bpb": seed.mean if seed else None, "best_genome": self.incumbent,
                "best_mean_val_bpb": best.mean if best else None, "best_n_evals": len(best.vals) if best else 0,
                "flagged": sum(1 for r in self.records.values() if r.flagged)}

    # ------------------------------------------------------------ folding results in
    def fold(self, evaluation: Evaluation, result: SlotResult) -> tuple[dict, list[Event]]:
        """Fold one finished evaluation into the state. Returns (scores to journal, events). Under `lock`:
        the breeder's proposal threads read the state meanwhile."""
        with self.lock:
            return self._fold(evaluation, result)

    def _fold(self, evaluation: Evaluation, result: SlotResult) -> tuple[dict, list[Event]]:
        gid = evaluation.genome_id
        rec = self.records.setdefault(gid, GenomeRecord())
        rec.n_folded += 1
        if (result.status == "ok" and self.config.contended_share and contended(rec, result)
                and sum(rec.reruns.values()) < MAX_CONTENDED_RERUNS):
            purpose = RERUN_PURPOSE.get(evaluation.purpose, evaluation.purpose)
            rec.reruns[purpose] = rec.reruns.get(purpose, 0) + 1
            return {}, [Event("contended", gid, {"purpose": purpose, "cpu_share": result.cpu_share})]
        self._record(gid, rec, result)
        if self.floor is None:
            events = self._maybe_establish_floor()
            if self.floor is None:
                if evaluation.purpose != "noise":
                    self.pending.append(gid)
                return {}, events
            rec = self.records[gid]  # scored just now, with the floor: no second Thresholdout query
            return self._scores(rec), events
        events = self._tighten_floor() if result.status == "ok" else []
        exhausted_before = self.thresholdout.exhausted
        self._score(gid)
        if self.thresholdout.exhausted and not exhausted_before:
            events.append(Event("holdout_exhausted", data={"budget": self.config.holdout_budget}))
        return self._scores(rec, revealed_now=True), events + self._judge(gid)

    def _record(self, gid: str, rec: GenomeRecord, result: SlotResult) -> None:
        if result.status == "ok":
            rec.cpu_seconds.append(result.cpu_seconds)
            rec.vals.append(result.val_bpb)
            rec.heldouts.append(result.heldout_bpb)
            rec.train_seconds, rec.steps = result.train_seconds, result.steps
            rec.params, rec.train_loss = result.params, result.train_loss
        elif result.status == "flagged":
            rec.flagged = result.reason or "flagged"
        else:
            rec.failed = result.reason or "failed"
            for parent in self.journal.genome(gid).parents:
                self.last_child_failure[parent] = (rec.failed, result.stderr_tail or result.detail or "")

    def _scores(self, rec: GenomeRecord, revealed_now: bool = False) -> dict:
        if rec.fitness == fit.WORST_FITNESS:
            return {"fitness": None}
        return {"answer": rec.answer, "revealed": int(revealed_now and rec.last_revealed), "penalty": rec.penalty,
                "fitness": rec.fitness}

    def _tighten_floor(self) -> list[Event]:
        """The floor, pooled over every genome's repeated evaluations (within-genome spread). A candidate's
        first evaluation chose it for re-evaluation, so only the evaluations after it count (else the floor
        is biased upward by regression to the mean); the seeds' noise repeats all count."""
        groups = [rec.vals if gid in self.seed_ids else rec.vals[1:] for gid, rec in self.records.items()
                  if not rec.flagged]
        floor, dof = fit.pooled_noise_floor(groups, self.config.min_noise_floor)
        if dof > self.floor_dof:
            self.floor, self.floor_dof = floor, dof
        children = [rec.vals[0] for gid, rec in self.records.items() if gid not in self.seed_ids and rec.vals]
        if not self.floor_warned and len(children) >= IMPLAUSIBLE_AFTER and self.floor > statistics.stdev(children):
            self.floor_warned = True
            return [Event("implausible_floor", data={"floor": self.floor, "children_sd": statistics.stdev(children)})]
        return []

    def _maybe_establish_floor(self) -> list[Event]:
        """Once every noise evaluation of the seeds is folded in, fix the floor, the held-out offset
        (the seed's own heldout - val) and Thresholdout."""
        folded = sum(self.records[s].n_folded for s in self.seed_ids if s in self.records)
        if folded < self.journal.count_purpose("noise"):
            return []
        # a flagged seed is never the best nor a parent (with no member left, the breeder falls back to the seed)
        seeds_ok = [s for s in self.seed_ids if self.records.get(s) and self.records[s].vals
                    and not self.records[s].flagged]
        if not seeds_ok:  # the scheduler stops on this; status and show can still read the run
            reasons = {s: self.records[s].flagged or self.records[s].failed for s in self.seed_ids if s in self.records}
            self.seed_failure = (f"every seed genome failed or was flagged ({reasons}); run `evo eval` on the "
                                 "seed to see its stderr and fix it before evolving it")
            return [Event("seed_failure", data={"why": self.seed_failure})]
        c = self.config
        self.floor, self.floor_dof = fit.pooled_noise_floor([self.records[s].vals for s in seeds_ok], c.min_noise_floor)
        self.offset = statistics.fmean(h - v for s in seeds_ok
                                       for v, h in zip(self.records[s].vals, self.records[s].heldouts))
        self.thresholdout = fit.make_thresholdout(self.floor, c.threshold, c.holdout_noise, c.holdout_budget, c.seed)
        for s in seeds_ok:
            self._score(s)
        self.incumbent = min(seeds_ok, key=lambda s: self.records[s].mean)
        events = [Event("noise_floor", data={"floor": self.floor, "offset": self.offset,
                                             "seed_mean": self.records[self.incumbent].mean})]
        pending, self.pending = self.pending, []
        for gid in dict.fromkeys(pending):
            self._score(gid)
            events += self._judge(gid)
        return events

    def _score(self, gid: str) -> None:
        """Fitness of a genome from the mean of its evaluations, the Thresholdout answer and the penalty."""
        rec = self.records[gid]
        rec.last_revealed = False
        # a child that failed once (say its re-evaluation timed out) is not trusted; a seed's failed noise
        # evaluation only leaves it fewer samples
        if rec.flagged or not rec.vals or (rec.failed and gid not in self.seed_ids):
            rec.fitness = fit.WORST_FITNESS
            self.population = [m for m in self.population if m.genome_id != gid]
            return
        held = statistics.fmean(rec.heldouts) - self.offset
        rec.answer, rec.last_revealed = self.thresholdout.answer(rec.mean, held)
        rec.revealed += int(rec.last_revealed)
        rec.penalty = fit.penalty(rec.answer, rec.mean, self.floor, self.config.penalty_weight)
        rec.fitness = fit.fitness(rec.mean, rec.penalty)
        self._place_member(gid)

    def _place_member(self, gid: str) -> None:
        """Insert or update a member; beyond population_size the worst member leaves (steady state)."""
        rec = self.records[gid]
        member = next((m for m in self.population if m.genome_id == gid), None)
        if member is None:
            member = new_member(gid, self.journal.genome(gid).length)
            self.population.append(member)
        member.fitness.values = (rec.fitness, member.length)
        if len(self.population) > self.config.population_size:
            worst = min(self.population, key=lambda m: m.fitness)
            if worst.genome_id != self.incumbent:
                self.population.remove(worst)

    def children_prior(self) -> tuple[float, float] | None:
        """What a child of this run scores before it is measured: a normal (mean, variance) from the
        first evaluations of the children so far (median, and the MAD's variance less the noise, at
        least a quarter of the noise variance); before PRIOR_AFTER children, centred on the seed's
        mean with the noise variance. Shrinking toward it undoes the luck that picks candidates."""
        if self.floor is None:
            return None
        firsts = [rec.vals[0] for gid, rec in self.records.items()
                  if gid not in self.seed_ids and rec.vals and not rec.flagged]
        noise = self.floor ** 2
        if len(firsts) < PRIOR_AFTER:
            seed = self.seed
            return (seed.mean, noise) if seed and seed.mean is not None else None
        centre = statistics.median(firsts)
        spread = 1.4826 * statistics.median(abs(v - centre) for v in firsts)
        return centre, max(spread ** 2 - noise, noise / 4)

    def p_better(self, gid: str, shrink: bool = True) -> float | None:
        """P(this genome is truly better than the incumbent), see fitness.p_better: with `shrink`,
        children (the incumbent too, when it is one) are shrunk toward `children_prior`, seeds are
        not. None without both scores."""
        rec, best = self.records.get(gid), self.best
        if rec is None or best is None or self.floor is None or not rec.vals or rec.fitness == fit.WORST_FITNESS:
            return None
        prior = self.children_prior() if shrink else None
        return fit.p_better(-rec.fitness, -best.fitness, self.floor, len(rec.vals), len(best.vals), self.floor_dof,
                            None if gid in self.seed_ids else prior,
                            None if self.incumbent in self.seed_ids else prior)

    def _judge(self, gid: str) -> list[Event]:
        """Sequential crowning. Screening is on the plain P(better than the incumbent); the crown on
        the shrunk one (`p_better`), so the luck that made a candidate does not crown it. A child
        whose first evaluation gives a plain P of at least candidate_confidence is a candidate and is
        re-evaluated with a fresh seed; after each re-evaluation it is crowned once the shrunk P
        reaches `confidence`, given up once the plain P < 0.5 or it has max_candidate_evals
        evaluations, else evaluated once more (fitness.decide)."""
        rec, c = self.records[gid], self.config
        if gid == self.incumbent or rec.flagged or not rec.vals:
            return []
        p, plain = self.p_better(gid), self.p_better(gid, shrink=False)
        if p is None:
            return []
        if len(rec.vals) == 1:
            rec.candidate = plain >= c.candidate_confidence
            return self._reeval(gid) if rec.candidate else []
        verdict = fit.decide(p, len(rec.vals), c.confidence, c.max_candidate_evals, p_keep=plain)
        if verdict == "crown":
            self.incumbent, rec.confirmed = gid, True
            return [Event("new_best", gid, {"val_bpb": rec.mean, "n_evals": len(rec.vals), "p_better": p})]
        if not rec.candidate:
            return []
        if verdict == "drop":
            rec.candidate, rec.not_confirmed = False, True
            return [Event("not_confirmed", gid, {"vals": list(rec.vals), "mean": rec.mean, "p_better": p})]
        return self._reeval(gid)

    def _reeval(self, gid: str) -> list[Event]:
        rec = self.records[gid]
        rec.reevals += 1
        return [Event("reeval", gid, {"number": rec.reevals})]
