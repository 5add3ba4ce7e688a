"""The scheduler: slots, the loop, follow-ups and stopping. It owns the run state, a breeder and a
reporter, and it is the only writer of evaluation state while a run goes.

Data flows one way: a slot result goes into `RunState.fold` (scores, events), the scores and
events are journaled in one transaction, the events' follow-ups are queued (a re-evaluation, a
re-run), and the reporter shows what happened. The breeder reads the state to make children.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass

from evo.breeding import Breeder
from evo.cluster import SlotLost
from evo.journal import Evaluation
from evo.reporter import Reporter
from evo.run import Run, harness_seed
from evo.slots import SlotPool
from evo.state import Event, RunState
from gpt import runner
from gpt.errors import UserError
from gpt.result import SlotResult

MAX_OPERATOR_FAILURES = 50  # consecutive failed proposals before the run stops making children
MAX_SLOT_ATTEMPTS = 3  # an evaluation whose slot was lost this often (a genome that kills its worker) fails
FOLLOW_UPS = ("reeval", "contended")  # events that queue another evaluation
JOURNALED = ("noise_floor", "new_best", "not_confirmed", "contended", "implausible_floor", "holdout_exhausted")


EXIT_CODES = {"interrupted": 130, "no_slots": 75}  # `evo run`/`resume` exit codes; 75: try again later


@dataclass(frozen=True)
class Stop:
    """Why a session ended: EXIT_CODES gives the exit code (0 for the rest)."""

    kind: str  # evals | hours | no_children | interrupted | no_slots (the Dask cluster is gone)
    text: str

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.kind, 0)


class Scheduler:
    """Runs one session of a run until the evaluation limit, the time limit or Ctrl-C."""

    def __init__(self, run: Run, state: RunState, breeder: Breeder, reporter: Reporter, pool: SlotPool):
        self.directory, self.state, self.breeder, self.reporter, self.pool = run, state, breeder, reporter, pool
        self.journal, self.config = run.journal, run.config
        self.running: dict = {}  # future -> Evaluation
        self.busy_seconds = 0.0
        self.most_slots = 0
        self.started_at = time.time()

    # ------------------------------------------------------------ follow-ups
    def follow_up(self, events: list[Event]) -> None:
        """Queue what the events ask for. Idempotent, so a resume re-applies every replayed event and
        so repairs a follow-up lost in a crash."""
        for event in events:
            gid = event.genome_id
            if event.kind == "reeval":  # the re-runs of starved re-evaluations are reevals too, but not this one
                wanted = event.data.get("number", 1) + self.state.records[gid].reruns.get("reeval", 0)
                if self.journal.count_for(gid, "reeval") < wanted:
                    self.journal.queue_evaluation(gid, "reeval", self.directory.next_seed(gid))
            elif event.kind == "contended":
                purpose = event.data["purpose"]
                rec = self.state.records[gid]
                planned = {"noise": self.config.noise_repeats, "reeval": rec.reevals}.get(purpose, 0)
                wanted = planned + rec.reruns[purpose]
                if self.journal.count_for(gid, purpose) < wanted:
                    self.journal.queue_evaluation(gid, purpose, self.directory.next_seed(gid))

    # ------------------------------------------------------------ the loop
    def run(self) -> dict:
        """Run until the evaluation limit, the time limit or Ctrl-C.

        Pseudocode (asynchronous steady state)::

            queue noise_repeats evaluations of each seed genome (fresh harness seeds)
            while evaluations are left and time is left:
                for each free slot:
                    job = next queued evaluation (noise, re-evaluation) or, if none,
                          a child: parents = tournament(population); child = operator(parents)
                          (a child identical to a known genome is skipped, never evaluated)
                    journal the job as running, start it in the slot
                wait until any slot finishes
                fold its result in: fitness = -mean(val_bpb) - penalty(Thresholdout answer)
                    ok      -> population (the worst member leaves)
                    flagged -> worst fitness, never a parent; failed -> worst fitness, reason kept
                if a child beats the best by more than the noise floor: queue a re-evaluation
                if a re-evaluated child still does: it is the new best
            on Ctrl-C: kill running slots; they stay 'running' in the journal and are re-queued on resume
        """
        from gpt.sealing import describe

        self.reporter.text("integrity", describe(self.journal.get_meta("integrity")))
        self.directory.claim()
        deadline = self.started_at + self.config.hours * 3600 if self.config.hours else float("inf")
        stop = None
        try:
            while True:
                stop = stop or self._limit_reached(deadline) or self._fill_free_slots()
                if not self.running:
                    waited = None if stop else self.pool.wait_for_slot()  # Dask workers may join later
                    if stop or waited:
                        stop = stop or Stop("no_slots", waited)
                        break
                    continue
                finished, _ = wait(list(self.running), timeout=5, return_when=FIRST_COMPLETED)
                for future in finished:
                    stop = self._collect(future) or stop
                if finished:  # the freed slots get their next job before the picture (a quarter second) is drawn
                    stop = stop or self._limit_reached(deadline) or self._fill_free_slots()
                    self.reporter.progress()
        except KeyboardInterrupt:
            stop = Stop("interrupted", "interrupted (Ctrl-C): running slots killed; `evo resume` continues")
            self._kill_slots()
            self.journal.event("interrupted")
        except BaseException:  # nothing of a slot outlives the controller; the journal says 'running'
            self._kill_slots()
            raise
        finally:
            self.pool.shutdown()
            self.breeder.close()
            self.reporter.close()
            self.directory.release()
        return self._end(stop)

    def _limit_reached(self, deadline: float) -> Stop | None:
        evals = self.config.evals
        if evals and self.journal.count_done() >= evals:
            return Stop("evals", f"{evals} evaluations done")
        if time.time() >= deadline:
            return Stop("hours", f"{self.config.hours} hours elapsed")
        return None

    def _fill_free_slots(self) -> Stop | None:
        """Start an evaluation in every free slot, within the evaluation limit."""
        evals = self.config.evals
        left = (evals - self.journal.count_done() - len(self.running)) if evals else len(self.pool.slots)
        while left > 0:
            free = self.pool.free()
            if not free:
                break
            evaluation = self.next_evaluation()
            if evaluation is None:
                return Stop("no_children", "no more children can be made")
            self._start(evaluation, free[0])
            left -= 1
        return None

    def next_evaluation(self) -> Evaluation | None:
        """A queued evaluation (noise, re-evaluations) first; otherwise a new child, journaled and queued."""
        queued = self.journal.queued()
        if queued:
            return queued[0]
        for _ in range(MAX_OPERATOR_FAILURES):
            child = self.breeder.next_child()
            if child is None:
                continue
            eval_id = self.journal.add_genome(child, "child", [harness_seed(self.config.seed, child.id, 0)])
            if eval_id is None:
                self.journal.event("duplicate", genome_id=child.id, operator=child.operator)
                continue
            return self.journal.evaluation(eval_id)
        self.reporter.note(f"{MAX_OPERATOR_FAILURES} proposals in a row failed or were duplicates; no more children")
        return None

    def _start(self, evaluation: Evaluation, slot) -> None:
        attempt = self.journal.mark_running(evaluation.id, slot.name)
        warm_dir = str(self.directory.path / "evals" / ".warm" / slot.name) if self._warms(slot) else ""
        job = self.directory.slot_job(self.directory.genome_path(evaluation.genome_id),
                                    self.directory.eval_dir(evaluation.id, attempt), evaluation.seed,
                                    warm_dir=warm_dir)
        self.running[self.pool.submit(slot, job)] = evaluation
        self.reporter.started(slot.name, evaluation, self.journal.genome(evaluation.genome_id))

    def _warms(self, slot) -> bool:
        """Whether this slot's next genome is started while this one is scored (slots.warm; gpt/warm.py):
        only where another evaluation may follow, and under auto only where a core would be idle."""
        evals, mode = self.config.evals, self.config.warm
        if mode == "off" or (evals and evals - self.journal.count_done() - len(self.running) - 1 <= 0):
            return False
        if mode == "on" or slot.device != "cpu":
            return True
        if slot.worker:  # a Dask worker's cores are its own: auto leaves its CPU slots cold
            return False
        return sum(s.threads for s in self.pool.slots if s.device == "cpu") < (os.cpu_count() or 1)

    def _collect(self, future) -> Stop | None:
        evaluation = self.running.pop(future)
        self.pool.release(future)
        try:
            result = future.result()
        except SlotLost as lost:  # not the genome's doing (unless it keeps happening): it runs again, counted once
            self.journal.event("slot_lost", eval_id=evaluation.id, reason=str(lost))
            if self.journal.evaluation(evaluation.id).attempt >= MAX_SLOT_ATTEMPTS:
                self.reporter.note(f"{lost}; evaluation {evaluation.id} lost its slot {MAX_SLOT_ATTEMPTS} times: "
                                   "it counts as failed")
                self.finish(evaluation, SlotResult(status="failed", reason="slot_lost", detail=str(lost)))
            else:
                self.journal.requeue_running(evaluation.id)
                self.reporter.note(f"{lost}; evaluation {evaluation.id} is queued again")
            return Stop("no_slots", f"{lost}; `evo resume` continues") if lost.fatal else None
        self.busy_seconds += result.slot_seconds or 0.0
        self.finish(evaluation, result)
        if self.state.seed_failure:
            raise UserError(self.state.seed_failure)
        return None

    def finish(self, evaluation: Evaluation, result: SlotResult) -> int | None:
        """Fold one finished evaluation in, journal it with its scores and events in one transaction,
        queue the follow-ups and report. Returns its completion number (None: it was already done)."""
        evaluation = self.journal.evaluation(evaluation.id)
        scores, events = self.state.fold(evaluation, result)
        journaled = [(e.kind, {"genome_id": e.genome_id, **e.data} if e.genome_id else dict(e.data))
                     for e in events if e.kind in JOURNALED]
        seq = self.journal.finish_evaluation(evaluation.id, result, scores, journaled)
        if seq is None:
            return None
        self.follow_up(events)
        for event in events:
            self.reporter.event(event, self.state, seq)
        if evaluation.purpose == "child":
            self.breeder.child_evaluated(evaluation, result, seq)
        self.reporter.finished(seq, evaluation, self.journal.genome(evaluation.genome_id), result, scores,
                               self.state, self.utilization())
        return seq

    def utilization(self) -> float:
        """Busy slot-seconds over available slot-seconds (slots: the most the pool has had)."""
        self.most_slots = max(self.most_slots, len(self.pool.slots))
        elapsed = max(time.time() - self.started_at, 1e-9)
        return self.busy_seconds / (max(self.most_slots, 1) * elapsed)

    def _kill_slots(self) -> None:
        runner.kill_all_slots()
        self.pool.shutdown()

    def _end(self, stop: Stop | None) -> dict:
        stop = stop or Stop("no_children", "nothing left to run")
        summary = self.state.summary()
        summary.update(wall_seconds=time.time() - self.started_at, slot_utilization=self.utilization(),
                       stopped=stop.text, stop_kind=stop.kind)
        self.journal.event("session_end", **summary)
        self.reporter.note(f"stopped: {stop.text}")
        return summary
