"""A run driven evaluation by evaluation with results the test chooses: the pieces `evo run` assembles
(run directory, run state, breeder, reporter, scheduler) with a one-slot pool that is never given a job.
The tests call the scheduler's public `next_evaluation` and `finish` as the loop does."""
from __future__ import annotations

from pathlib import Path

from evo import config as cfg
from evo.breeding import Breeder
from evo.genome import Genome
from evo.journal import Evaluation, Journal
from evo.reporter import Reporter
from evo.run import JOURNAL_NAME, Run, harness_seed, open_run
from evo.scheduler import Scheduler
from evo.slots import SlotPool, plan_slots
from evo.state import RunState
from gpt.result import SlotResult


def scheduler_for(run: Run, state: RunState, replayed=()) -> Scheduler:
    reporter = Reporter(run.path, quiet=True, run=run)
    breeder = Breeder(state, run.journal, run.path, note=reporter.note)
    scheduler = Scheduler(run, state, breeder, reporter, SlotPool(plan_slots("cpu", 1)))
    scheduler.follow_up(list(replayed))
    return scheduler


def new_run(run_dir: Path, seed_genome: Path, dataset_path: str = "", **overrides) -> Scheduler:
    """A run set up as `evo run` sets one up (resolved config, journal meta, the seed genome and its
    noise evaluations queued), on the smoke preset with `overrides`."""
    config = cfg.resolve({}, {"preset": "smoke", "genomes": (str(seed_genome),), "out": str(run_dir), **overrides})
    run_dir.mkdir(parents=True)
    journal = Journal(run_dir / JOURNAL_NAME)
    seed = Genome(source=Path(seed_genome).read_text(), operator="seed", rationale=f"seed genome {seed_genome}")
    journal.start_run({"config": config.to_dict(), "dataset": dataset_path, "seeds": [seed.id]},
                      [(seed, [harness_seed(config.seed, seed.id, k) for k in range(config.noise_repeats)])])
    return scheduler_for(Run(run_dir, config, journal, dataset_path), RunState(config, journal))


def resumed(run_dir: Path) -> Scheduler:
    """The run as `evo resume` picks it up: replayed from its journal, lost follow-ups re-queued."""
    run = open_run(run_dir)
    run.journal.requeue_running()
    state, replayed = RunState.replay(run.config, run.journal)
    return scheduler_for(run, state, replayed)


def replayed_state(run_dir: Path) -> RunState:
    run = open_run(run_dir)
    return RunState.replay(run.config, run.journal)[0]


def fake(status: str = "ok", val: float | None = 3.0, heldout: float | None = None,
         reason: str | None = None) -> SlotResult:
    """A result shaped like run_slot's, for the rows about selection (no training needed)."""
    ok = status == "ok"
    return SlotResult(status=status, reason=reason, val_bpb=val,
                      heldout_bpb=heldout if heldout is not None else (val + 0.01 if val is not None else None),
                      causality="pass" if ok else None, canary="pass" if ok else None,
                      stateless="pass" if ok else None, train_seconds=1.0, slot_seconds=2.0, eval_seconds=0.3,
                      startup_seconds=0.5, export_seconds=0.1, steps=20, sandbox="none", budget_s=1.0,
                      stderr_tail="Traceback ...\nRuntimeError: boom" if status == "failed" else "")


def finish(scheduler: Scheduler, row: Evaluation, result: SlotResult, slot_name: str = "cpu0") -> None:
    """What the loop does when a slot returns: mark it running in its slot, fold and journal it, then (once the
    free slots have jobs) let the reporter draw its picture."""
    scheduler.journal.mark_running(row.id, slot_name)
    scheduler.finish(row, result)
    scheduler.reporter.progress()


def add_child(scheduler: Scheduler, source: str, rationale: str, parents: tuple | None = None) -> Evaluation:
    """Journal a child (as an operator would have made it) and return its queued evaluation."""
    child = Genome(source=source, parents=parents or (scheduler.state.seed_ids[0],), operator="knob_mutation",
                   rationale=rationale)
    eval_id = scheduler.journal.add_genome(child, "child", [harness_seed(scheduler.config.seed, child.id, 0)])
    assert eval_id is not None, "the child is a known genome"
    return scheduler.journal.evaluation(eval_id)


def slot_job(scheduler: Scheduler, row: Evaluation, attempt: int, **changes):
    """The job the scheduler would give this evaluation's slot."""
    run = scheduler.directory
    return run.slot_job(run.genome_path(row.genome_id), run.eval_dir(row.id, attempt), row.seed, **changes)
