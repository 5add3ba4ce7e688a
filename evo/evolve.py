"""The evolution loop: asynchronous steady-state search with DEAP primitives.

`Evolution.run()` is the core loop; everything it needs is built in `__init__`:
the DEAP toolbox (selection and operators), the population, hall of fame, statistics
and logbook, the slot pool, the journal, Thresholdout and TensorBoard. All state can be
rebuilt from the journal (`replay`), which is how `evo resume` continues a run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import statistics
import time
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from deap import base, creator, tools  # noqa: F401  (base: DEAP fitness classes)

from evo import fitness as fit
from evo.config import RunConfig
from evo.genome import Genome, OperatorFailure, ParentInfo
from evo.journal import Journal
from evo.breeding import Breeder
from evo.progress import Progress
from evo.slots import SlotPool
from evo.tblog import TensorBoardLog
from gpt.sealing import describe as describe_integrity
from gpt.errors import UserError
from gpt import runner
from gpt.runner import SlotJob

HALL_OF_FAME_SIZE = 10
MAX_OPERATOR_FAILURES = 50  # consecutive failed proposals before the run stops making children


class Member:
    """A population member: a genome id. Its length is the code size used for parsimony."""

    def __init__(self, genome_id: str, length: int):
        self.genome_id = genome_id
        self.length = length


if not hasattr(creator, "EvoFitness"):
    # Two values compared lexicographically: fitness first, then shorter code (weight -1)
    # breaks exact ties: autoresearch's simplicity criterion inside tools.selTournament.
    creator.create("EvoFitness", base.Fitness, weights=(1.0, -1.0))
    creator.create("EvoIndividual", Member, fitness=creator.EvoFitness)


@dataclass
class GenomeRecord:
    """What the loop knows of a genome, folded from its evaluations."""

    n_folded: int = 0
    vals: list = field(default_factory=list)
    heldouts: list = field(default_factory=list)
    flagged: str | None = None
    failed: str | None = None
    fitness: float = fit.WORST_FITNESS
    penalty: float = 0.0
    answer: float | None = None
    candidate: bool = False
    train_seconds: float | None = None
    steps: int | None = None
    cpu_seconds: list = field(default_factory=list)  # the runner's CPU measurement of each folded evaluation
    reruns: dict = field(default_factory=dict)  # purpose -> evaluations re-run because they were contended

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.vals) if self.vals else None


MAX_CONTENDED_RERUNS = 2  # per genome: past this a starved evaluation is folded in (the machine stays busy)
CONTENDED_CPU_RATIO = 0.5  # below this share of the genome's median CPU seconds an evaluation was starved
RERUN_PURPOSE = {"child": "rerun"}  # a child's re-run must not count as a new child
IMPLAUSIBLE_AFTER = 5  # children folded before the floor is compared with their spread


def harness_seed(run_seed: int, genome_id: str, k: int) -> int:
    """The harness seed of a genome's k-th evaluation: fresh per evaluation, fixed by the run seed."""
    return int.from_bytes(hashlib.sha256(f"{run_seed}:{genome_id}:{k}".encode()).digest()[:4], "big") >> 1


class Evolution:
    """One run: owns the population and drives the slots. Build it with `create` or `resume`."""

    def __init__(self, run_dir: Path, config: RunConfig, journal: Journal, dataset_path: str, quiet: bool = False,
                 operators: bool = True):
        self.run_dir, self.config, self.journal, self.dataset_path = run_dir, config, journal, dataset_path
        self.progress = Progress(quiet=quiet)
        self.records: dict[str, GenomeRecord] = {}
        self.last_child_failure: dict[str, tuple[str, str]] = {}
        self.population: list = []
        self.hall_of_fame = tools.HallOfFame(HALL_OF_FAME_SIZE, similar=lambda a, b: a.genome_id == b.genome_id)
        self.stats = tools.Statistics(key=lambda ind: ind.fitness.values[0])
        for name, fn in (("mean", np.mean), ("median", np.median), ("max", np.max), ("min", np.min)):
            self.stats.register(name, fn)
        self.logbook = tools.Logbook()
        self.floor: float | None = None
        self.floor_dof = 0  # degrees of freedom behind the floor: its relative error is about 1/sqrt(2 dof)
        self.floor_warned = False
        self.offset = 0.0
        self.thresholdout: fit.Thresholdout | None = None
        self.incumbent: str | None = None
        self.seed_ids: list[str] = journal.get_meta("seeds", [])
        self.pending: list[tuple] = []  # child results that arrived before the noise floor was known
        self.seed_failure: str | None = None
        self.tb: TensorBoardLog | None = None
        self._child_index: int | None = None
        # operators=False (status, show, export): no LLM client, no API key needed
        self.breeder = Breeder(config if operators else dataclasses.replace(config, llm={}), run_dir, journal, self,
                               config.slots or 1, self.propose, self.progress.note)
        self.toolbox = self.breeder.toolbox

    # ------------------------------------------------------------ what LLM operators may know (RunContext)
    @property
    def noise_floor(self) -> float | None:
        return self.floor

    def latest_memory(self) -> str | None:
        return self.journal.latest_memory()

    def recent_history(self, n: int) -> list[dict]:
        """The last n evaluated children: public facts only (no held-out values, no probe internals)."""
        history = []
        for row in self.journal.recent_children(n):
            genome = self.journal.genome(row["genome_id"])
            parent = self.records.get(genome.parents[0]) if genome.parents else None
            delta = (row["val_bpb"] - parent.mean) if (row["val_bpb"] is not None and parent and parent.mean) else None
            status = row["status"] if row["status"] != "failed" else f"failed: {row['reason']}"
            history.append({"child": row["genome_id"], "operator": genome.operator,
                            "idea": genome.rationale.splitlines()[0] if genome.rationale else "",
                            "delta_val_bpb": delta, "status": status})
        return history

    # ------------------------------------------------------------ building blocks
    def parent_info(self, genome_id: str) -> ParentInfo:
        rec = self.records[genome_id]
        return ParentInfo(genome=self.journal.genome(genome_id), mean_val_bpb=rec.mean, n_evals=len(rec.vals),
                          noise_floor=self.floor, train_seconds=rec.train_seconds, steps=rec.steps,
                          last_child_failure=self.last_child_failure.get(genome_id))

    def genome_path(self, genome_id: str) -> Path:
        path = self.run_dir / "genomes" / f"{genome_id}.py"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.journal.genome(genome_id).source)
        return path

    # ------------------------------------------------------------ folding results in
    def fold(self, row, result: dict) -> tuple[dict, list]:
        """Fold one finished evaluation into the state. Returns (scores to journal, follow-up actions)."""
        gid = row["genome_id"]
        rec = self.records.setdefault(gid, GenomeRecord())
        rec.n_folded += 1
        status = result.get("status")
        if (status == "ok" and self.config.contended_share and self._contended(rec, result)
                and sum(rec.reruns.values()) < MAX_CONTENDED_RERUNS):
            purpose = RERUN_PURPOSE.get(row["purpose"], row["purpose"])
            rec.reruns[purpose] = rec.reruns.get(purpose, 0) + 1
            return {}, [("contended", (gid, purpose, result.get("cpu_share")))]
        if status == "ok":
            rec.cpu_seconds.append(result.get("cpu_seconds"))
            rec.vals.append(result["val_bpb"])
            rec.heldouts.append(result["heldout_bpb"])
            rec.train_seconds, rec.steps = result.get("train_seconds"), result.get("steps")
        elif status == "flagged":
            rec.flagged = result.get("reason") or "flagged"
        else:
            rec.failed = result.get("reason") or "failed"
            for parent in self.journal.genome(gid).parents:
                self.last_child_failure[parent] = (rec.failed, result.get("stderr_tail") or result.get("detail") or "")
        if self.floor is None:
            actions = self._maybe_establish_floor(row)
            if self.floor is None:
                if row["purpose"] != "noise":
                    self.pending.append(gid)
                return {}, actions
            rec = self.records[gid]  # scored just now, with the floor: no second Thresholdout query
            return {"answer": rec.answer, "revealed": 0, "penalty": rec.penalty,
                    "fitness": None if rec.fitness == fit.WORST_FITNESS else rec.fitness}, actions
        actions = self._tighten_floor() if status == "ok" else []
        scores = self._score(gid)
        return scores, actions + self._judge(gid)

    @staticmethod
    def _contended(rec: GenomeRecord, result: dict) -> bool:
        """A slot that was starved: the runner saw its processes get too little CPU, or far less CPU time
        than the same genome's other evaluations. Its score says more about the machine than the genome."""
        if result.get("contended"):
            return True
        mine = [c for c in rec.cpu_seconds if c]
        cpu = result.get("cpu_seconds")
        return bool(cpu and len(mine) >= 2 and cpu < CONTENDED_CPU_RATIO * statistics.median(mine))

    def _tighten_floor(self) -> list:
        """The floor, pooled over every genome's repeated evaluations (within-genome spread). A candidate's
        first evaluation chose it for re-evaluation, so only the evaluations after it count (else the floor
        is biased upward by regression to the mean); the seeds' noise repeats all count."""
        groups = [rec.vals if gid in self.seed_ids else rec.vals[1:] for gid, rec in self.records.items()
                  if not rec.flagged]
        floor, dof = fit.pooled_noise_floor(groups, self.config.min_noise_floor)
        actions = []
        if dof > self.floor_dof:
            self.floor, self.floor_dof = floor, dof
        children = [rec.vals[0] for gid, rec in self.records.items() if gid not in self.seed_ids and rec.vals]
        if not self.floor_warned and len(children) >= IMPLAUSIBLE_AFTER and self.floor > statistics.stdev(children):
            self.floor_warned = True
            actions.append(("implausible_floor", statistics.stdev(children)))
        return actions

    def _maybe_establish_floor(self, row) -> list:
        """Once every noise evaluation of the seeds is folded in, fix the floor, the held-out offset
        (the seed's own heldout - val) and Thresholdout."""
        folded = sum(self.records[s].n_folded for s in self.seed_ids if s in self.records)
        if folded < self.journal.count("purpose = 'noise'"):
            return []
        # a flagged seed is never the best nor a parent (with no member left, `propose` falls back to the seed)
        seeds_ok = [s for s in self.seed_ids if self.records.get(s) and self.records[s].vals
                    and not self.records[s].flagged]
        if not seeds_ok:  # the loop stops on this; status and show can still read the run
            reasons = {s: self.records[s].flagged or self.records[s].failed for s in self.seed_ids if s in self.records}
            self.seed_failure = (f"every seed genome failed or was flagged ({reasons}); run `evo eval` on the "
                                 "seed to see its stderr and fix it before evolving it")
            return []
        self.floor, self.floor_dof = fit.pooled_noise_floor([self.records[s].vals for s in seeds_ok],
                                                            self.config.min_noise_floor)
        self.offset = statistics.fmean(h - v for s in seeds_ok
                                       for v, h in zip(self.records[s].vals, self.records[s].heldouts))
        self.thresholdout = fit.make_thresholdout(self.floor, self.config.threshold, self.config.holdout_noise,
                                                  self.config.holdout_budget, self.config.seed)
        for s in seeds_ok:
            self._score(s)
        self.incumbent = min(seeds_ok, key=lambda s: self.records[s].mean)
        actions = [("noise_floor", self.floor)]
        pending, self.pending = self.pending, []
        for gid in dict.fromkeys(pending):
            self._score(gid)
            actions += self._judge(gid)
        return actions

    def _score(self, gid: str) -> dict:
        """Fitness of a genome from the mean of its evaluations, the Thresholdout answer and the penalty."""
        rec = self.records[gid]
        # a child that failed once (say its re-evaluation timed out) is not trusted; a seed's failed noise
        # evaluation only leaves it fewer samples
        if rec.flagged or not rec.vals or (rec.failed and gid not in self.seed_ids):
            rec.fitness = fit.WORST_FITNESS
            self._remove_member(gid)
            return {"fitness": None}
        held = statistics.fmean(rec.heldouts) - self.offset
        was_exhausted = self.thresholdout.exhausted
        rec.answer, revealed = self.thresholdout.answer(rec.mean, held)
        rec.penalty = fit.penalty(rec.answer, rec.mean, self.floor, self.config.penalty_weight)
        rec.fitness = fit.fitness(rec.mean, rec.penalty)
        self._place_member(gid)
        return {"answer": rec.answer, "revealed": int(revealed), "penalty": rec.penalty, "fitness": rec.fitness,
                "holdout_exhausted_now": self.thresholdout.exhausted and not was_exhausted}

    def _place_member(self, gid: str) -> None:
        """Insert or update a member; beyond population_size the worst member leaves (steady state)."""
        rec = self.records[gid]
        member = next((m for m in self.population if m.genome_id == gid), None)
        if member is None:
            member = creator.EvoIndividual(gid, self.journal.genome(gid).length)
            self.population.append(member)
        member.fitness.values = (rec.fitness, member.length)
        if len(self.population) > self.config.population_size:
            worst = min(self.population, key=lambda m: m.fitness)
            if worst.genome_id != self.incumbent:
                self.population.remove(worst)
        self.hall_of_fame.update(self.population)

    def _remove_member(self, gid: str) -> None:
        self.population = [m for m in self.population if m.genome_id != gid]

    def _judge(self, gid: str) -> list:
        """Noise-aware improvement: a child that beats the incumbent by more than the floor is a candidate
        and is re-evaluated with a fresh seed; it is crowned when its mean still beats the incumbent's by
        more than the floor and by two standard errors of the difference of the two means."""
        rec, best = self.records[gid], self.records[self.incumbent]
        if gid == self.incumbent or rec.flagged or not rec.vals:
            return []
        if len(rec.vals) == 1:
            rec.candidate = fit.is_improvement(-rec.fitness, -best.fitness, self.floor)
            return [("reeval", gid)] if rec.candidate else []
        if fit.is_improvement(-rec.fitness, -best.fitness, self.floor, len(rec.vals), len(best.vals)):
            self.incumbent = gid
            return [("new_best", gid)]
        if rec.candidate:
            rec.candidate = False
            return [("not_confirmed", gid)]
        return []

    # ------------------------------------------------------------ replay (resume)
    def replay(self, repair: bool = True) -> None:
        """Rebuild population, hall of fame, Thresholdout and incumbent from the journal, in completion
        order. With `repair`, follow-ups lost in a crash (a candidate's re-evaluation) are queued."""
        for row in self.journal.done_evaluations():
            _, actions = self.fold(row, json.loads(row["result"]))
            if repair:
                self._act(actions, live=False)

    # ------------------------------------------------------------ actions after a fold
    def _act(self, actions: list, live: bool, step: int = 0) -> None:
        for kind, value in actions:
            if kind == "reeval":
                self._queue_reeval(value)
            elif kind == "contended":
                self._queue_rerun(*value[:2])
            if not live:
                continue
            if kind == "contended":
                gid, purpose, share = value
                self.journal.event("contended", genome_id=gid, purpose=purpose, cpu_share=share)
                self.progress.note(f"{gid}: its slot was starved (CPU share {share if share is None else round(share, 2)})"
                                   f"; the evaluation is not folded in and runs again")
            elif kind == "implausible_floor":
                self.journal.event("implausible_floor", floor=self.floor, children_sd=value)
                self.progress.note(f"warning: the noise floor {self.floor:.4f} bpb is larger than the spread of the "
                                   f"children ({value:.4f}): a starved or broken noise evaluation may have inflated "
                                   "it, and no child can be crowned while it stands; check the seed's evaluations")
            if kind == "noise_floor":
                self.journal.event("noise_floor", floor=value, offset=self.offset)
                self.progress.note(f"noise floor: {value:.4f} bpb (seed mean {self.records[self.incumbent].mean:.4f})")
            elif kind == "new_best":
                rec = self.records[value]
                genome = self.journal.genome(value)
                self.journal.event("new_best", genome_id=value, val_bpb=rec.mean, n_evals=len(rec.vals))
                parent = self.journal.genome(genome.parents[0]).source if genome.parents else None
                self.tb.new_best(step, value, rec.mean, parent, genome.source)
                self.progress.note(f"new best {value}: {rec.mean:.4f} bpb over {len(rec.vals)} evaluations "
                                   f"({genome.operator}: {genome.rationale})")
            elif kind == "not_confirmed":
                rec = self.records[value]
                self.journal.event("not_confirmed", genome_id=value, vals=rec.vals)
                self.progress.note(f"{value} not confirmed: re-evaluation gave {rec.vals[-1]:.4f}, "
                                   f"mean {rec.mean:.4f} is within the noise of the best")

    def _queue_rerun(self, gid: str, purpose: str) -> None:
        """Idempotent: a contended evaluation is run once more (fresh seed), also when replaying after a crash."""
        base = {"noise": self.config.noise_repeats, "reeval": 1}.get(purpose, 0)
        if self.journal.count("genome_id = ? AND purpose = ?", (gid, purpose)) < base + self.records[gid].reruns[purpose]:
            k = self.journal.count("genome_id = ?", (gid,))
            self.journal.queue_evaluation(gid, purpose, harness_seed(self.config.seed, gid, k))

    def _queue_reeval(self, gid: str) -> None:
        """Idempotent: one re-evaluation per candidate, also when replaying after a crash."""
        if self.journal.count("genome_id = ? AND purpose = 'reeval'", (gid,)) == 0:
            k = self.journal.count("genome_id = ?", (gid,))
            self.journal.queue_evaluation(gid, "reeval", harness_seed(self.config.seed, gid, k))

    # ------------------------------------------------------------ making children
    def propose(self, index: int) -> Genome | None:
        """Select parents from the population as it stands and apply one operator."""
        rng = random.Random(f"{self.config.seed}:child:{index}")
        operator = self.breeder.choose_operator(rng, len(self.population))
        parents = self.toolbox.select(self.population, operator.arity) if self.population else []
        if not parents:
            parents = [creator.EvoIndividual(self.seed_ids[0], 0)] * operator.arity
        try:
            return operator([self.parent_info(p.genome_id) for p in parents], rng)
        except OperatorFailure as exc:
            self.journal.event("operator_failure", operator=operator.name, reason=str(exc)[:2000],
                               response=str(getattr(exc, "response", "") or "")[:20000])
            return None

    def next_evaluation(self):
        """A queued evaluation (noise, re-evaluations) first; otherwise a new child, journaled and queued."""
        running = {row["id"] for row in self.journal.evaluations("state = 'running'")}
        queued = [row for row in self.journal.queued() if row["id"] not in running]
        if queued:
            return queued[0]
        failures = 0
        while failures < MAX_OPERATOR_FAILURES:
            child = self.breeder.next_child(self._next_child_index)
            if child is None:
                failures += 1
                continue
            eval_id = self.journal.add_genome(child, "child", [harness_seed(self.config.seed, child.id, 0)])
            if eval_id is None:
                self.journal.event("duplicate", genome_id=child.id, operator=child.operator)
                failures += 1
                continue
            return self.journal.evaluations("id = ?", (eval_id,))[0]
        self.progress.note(f"{MAX_OPERATOR_FAILURES} proposals in a row failed or were duplicates; no more children")
        return None

    def _next_child_index(self) -> int:
        """Children are numbered by proposal; each number fixes that proposal's random stream."""
        if self._child_index is None:
            self._child_index = self.journal.count("purpose = 'child'") + len(self.journal.events("duplicate")) \
                + len(self.journal.events("operator_failure"))
        self._child_index += 1
        return self._child_index - 1

    def slot_job(self, row, attempt: int) -> SlotJob:
        c = self.config
        return SlotJob(genome=str(self.genome_path(row["genome_id"])), dataset=self.dataset_path,
                       out_dir=str(self.run_dir / "evals" / f"{row['id']:05d}-{attempt}"), budget_s=c.budget_s,
                       seed=row["seed"], grace_s=c.grace_s or None, eval_tokens=c.eval_tokens,
                       eval_seq_len=c.eval_seq_len, sandbox=c.sandbox, contended_share=c.contended_share)

    # ------------------------------------------------------------ the loop
    def run(self, pool: SlotPool) -> dict:
        """Run until the evaluation limit, the time limit or Ctrl-C.

        Pseudocode (asynchronous steady state)::

            queue noise_repeats evaluations of each seed genome (fresh harness seeds)
            while evaluations are left and time is left:
                for each free slot:
                    job = next queued evaluation (noise, re-evaluation) or, if none,
                          a child: parents = selTournament(population); child = operator(parents)
                          (a child identical to a known genome is skipped, never evaluated)
                    journal the job as running, start it in the slot
                wait until any slot finishes
                fold its result in: fitness = -mean(val_bpb) - penalty(Thresholdout answer)
                    ok      -> population (the worst member leaves), hall of fame, statistics
                    flagged -> worst fitness, never a parent; failed -> worst fitness, reason kept
                if a child beats the best by more than the noise floor: queue a re-evaluation
                if a re-evaluated child still does: it is the new best
            on Ctrl-C: kill running slots; they stay 'running' in the journal and are re-queued on resume
        """
        c = self.config
        self.breeder.n_slots = len(pool.slots)
        self.tb = TensorBoardLog(self.run_dir)
        self.tb.text("integrity", describe_integrity(self.journal.get_meta("integrity")), 0)
        start = time.time()
        deadline = start + c.hours * 3600 if c.hours else float("inf")
        running: dict = {}  # future -> (row, slot name, started)
        busy_seconds = 0.0
        stopping_reason = None
        try:
            while True:
                done_count = self.journal.count("state = 'done' AND purpose != 'export'")
                limit_left = (c.evals - done_count - len(running)) if c.evals else 1
                if stopping_reason is None:
                    if c.evals and done_count >= c.evals:
                        stopping_reason = f"{c.evals} evaluations done"
                    elif time.time() >= deadline:
                        stopping_reason = f"{c.hours} hours elapsed"
                while stopping_reason is None and limit_left > 0 and pool.free():
                    row = self.next_evaluation()
                    if row is None:
                        stopping_reason = "no more children can be made"
                        break
                    slot = pool.free()[0]
                    attempt = self.journal.mark_running(row["id"], slot.name)
                    future = pool.submit(slot, self.slot_job(row, attempt))
                    running[future] = (row, slot.name, time.time())
                    self.progress.started(slot.name, row, self.journal.genome(row["genome_id"]))
                    limit_left -= 1
                if not running:
                    break
                finished, _ = wait(list(running), timeout=5, return_when=FIRST_COMPLETED)
                for future in finished:
                    row, slot_name, _ = running.pop(future)
                    pool.release(future)
                    result = future.result()
                    busy_seconds += result.get("slot_seconds") or 0.0
                    self._finish(row, result, busy_seconds / (len(pool.slots) * max(time.time() - start, 1e-9)))
                    if self.seed_failure:
                        raise UserError(self.seed_failure)
        except KeyboardInterrupt:
            stopping_reason = "interrupted (Ctrl-C): running slots killed; `evo resume` continues"
            runner.kill_all_slots()
            pool.shutdown()
            self.journal.event("interrupted")
        except BaseException:  # nothing of a slot outlives the controller; the journal says 'running'
            runner.kill_all_slots()
            pool.shutdown()
            raise
        finally:
            self.breeder.close()
            self.tb.close()
        wall = time.time() - start
        utilization = busy_seconds / (len(pool.slots) * wall) if wall > 0 else 0.0
        summary = self.summary()
        summary.update(wall_seconds=wall, slot_utilization=utilization, stopped=stopping_reason)
        self.journal.event("session_end", **summary)
        self.progress.note(f"stopped: {stopping_reason}")
        return summary

    def _finish(self, row, result: dict, utilization: float) -> None:
        """Journal one finished evaluation (atomically with its scores), then act on it."""
        row = self.journal.evaluations("id = ?", (row["id"],))[0]
        scores, actions = self.fold(row, result)
        seq = self.journal.finish_evaluation(row["id"], result, scores)
        if seq is None:
            return
        if scores.get("holdout_exhausted_now"):
            self.journal.event("holdout_exhausted", budget=self.config.holdout_budget)
            self.progress.note("Thresholdout budget spent: held-out values are no longer revealed")
        self._act(actions, live=True, step=seq)
        rec = self.records[row["genome_id"]]
        if row["purpose"] == "child":
            genome = self.journal.genome(row["genome_id"])
            parent = self.records.get(genome.parents[0]) if genome.parents else None
            self.breeder.reward(row["genome_id"], parent.mean if parent else None, result.get("val_bpb"))
            self.breeder.maybe_summarize(seq, self.recent_history(self.breeder.llm.history_rows)
                                         if self.breeder.llm else [])
        self.tb.evaluation(seq, result.get("val_bpb"), scores.get("answer"), scores.get("penalty"),
                           scores.get("fitness"))
        if result.get("status") == "flagged":
            self.tb.text("flagged", f"{row['genome_id']} flagged: {result.get('reason')}", seq)
        best = self.records.get(self.incumbent) if self.incumbent else None
        self.tb.run_state(seq, best.mean if best else None, self.floor, utilization)
        if self.population and seq % self.config.population_size == 0:
            compiled = self.stats.compile(self.population)
            self.logbook.record(evals=seq, **compiled)
            self.tb.population(seq, compiled["mean"], compiled["median"])
        self.tb.flush()
        self.progress.finished(seq, self.config.evals, row, self.journal.genome(row["genome_id"]), result, rec,
                               best, self.records.get(self.seed_ids[0]), self.floor)

    def summary(self) -> dict:
        seed = self.records.get(self.seed_ids[0]) if self.seed_ids else None
        best = self.records.get(self.incumbent) if self.incumbent else None
        return {"evaluations": self.journal.count("state = 'done' AND purpose != 'export'"),
                "noise_floor": self.floor, "seed_mean_val_bpb": seed.mean if seed else None,
                "best_genome": self.incumbent, "best_mean_val_bpb": best.mean if best else None,
                "best_n_evals": len(best.vals) if best else 0,
                "flagged": sum(1 for r in self.records.values() if r.flagged)}

