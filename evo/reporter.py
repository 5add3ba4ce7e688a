"""What a person sees of a running run: one line per event in the terminal, and TensorBoard.

The scheduler hands the reporter what happened (a slot started, an evaluation finished with its
scores, an `Event` from the run state, a note); the reporter only displays. Nothing it does
changes the run, and a run without a terminal (`--quiet`) is the same run.
"""
from __future__ import annotations

import statistics
from pathlib import Path

from evo.genome import Genome
from evo.journal import Evaluation
from evo.state import Event, RunState
from evo.tblog import TensorBoardLog
from evo.terminal import Terminal
from gpt.result import SlotResult


class Reporter:
    """The terminal (evo/terminal.py) and the run's TensorBoard log (RUN_DIR/tb, evo/tblog.py)."""

    def __init__(self, run_dir: Path, quiet: bool = False):
        self.terminal = Terminal(quiet=quiet)
        self.tb = TensorBoardLog(run_dir)

    def note(self, text: str) -> None:
        self.terminal.note(text)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self.tb.text(tag, text, step)

    def started(self, slot: str, evaluation: Evaluation, genome: Genome) -> None:
        self.terminal.started(slot, evaluation, genome)

    def event(self, event: Event, state: RunState, step: int) -> None:
        """A finding of the run state, in words (and, for a new best, its diff in TensorBoard)."""
        d, gid = event.data, event.genome_id
        if event.kind == "contended":
            share = d.get("cpu_share")
            self.note(f"{gid}: its slot was starved (CPU share {share if share is None else round(share, 2)}); "
                      "the evaluation is not folded in and runs again")
        elif event.kind == "implausible_floor":
            self.note(f"warning: the noise floor {d['floor']:.4f} bpb is larger than the spread of the children "
                      f"({d['children_sd']:.4f}): a starved or broken noise evaluation may have inflated it, and no "
                      "child can be crowned while it stands; check the seed's evaluations")
        elif event.kind == "noise_floor":
            self.note(f"noise floor: {d['floor']:.4f} bpb (seed mean {d['seed_mean']:.4f})")
        elif event.kind == "holdout_exhausted":
            self.note("Thresholdout budget spent: held-out values are no longer revealed")
        elif event.kind == "new_best":
            genome = state.journal.genome(gid)
            parent = state.journal.genome(genome.parents[0]).source if genome.parents else None
            self.tb.new_best(step, gid, d["val_bpb"], parent, genome.source)
            self.note(f"new best {gid}: {d['val_bpb']:.4f} bpb over {d['n_evals']} evaluations "
                      f"({genome.operator}: {genome.rationale})")
        elif event.kind == "not_confirmed":
            self.note(f"{gid} not confirmed: re-evaluation gave {d['vals'][-1]:.4f}, mean {d['mean']:.4f} is "
                      "within the noise of the best")

    def finished(self, seq: int, evaluation: Evaluation, genome: Genome, result: SlotResult, scores: dict,
                 state: RunState, utilization: float) -> None:
        """One finished evaluation: its terminal line and its TensorBoard scalars."""
        self.tb.evaluation(seq, result.val_bpb, scores.get("answer"), scores.get("penalty"), scores.get("fitness"))
        if result.status == "flagged":
            self.tb.text("flagged", f"{evaluation.genome_id} flagged: {result.reason}", seq)
        best = state.best
        self.tb.run_state(seq, best.mean if best else None, state.floor, utilization)
        if state.population and seq % state.config.population_size == 0:
            values = [m.fitness.values[0] for m in state.population]
            self.tb.population(seq, statistics.fmean(values), statistics.median(values))
        self.tb.flush()
        self.terminal.finished(seq, evaluation, genome, result, state)

    def close(self) -> None:
        self.terminal.close()
        self.tb.close()
