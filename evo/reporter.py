"""What a person sees of a running run: one line per event in the terminal, and TensorBoard.

The scheduler hands the reporter what happened (a slot started, an evaluation finished with its
scores, an `Event` from the run state, a note); the reporter only displays. Nothing it does
changes the run, and a run without a terminal (`--quiet`) is the same run.

Given the `Run`, it also keeps RUN_DIR/progress.png current (evo/plots.py; redrawn at most every
PICTURE_EVERY_S seconds, and at close) and logs the same picture to TensorBoard as the image
"progress" every IMAGE_EVERY evaluations and at close. A picture that cannot be drawn is noted once
and never stops the run.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

from evo.genome import Genome
from evo.journal import Evaluation
from evo.state import Event, RunState
from evo.tblog import TensorBoardLog
from evo.terminal import Terminal
from gpt.result import SlotResult


class Reporter:
    """The terminal (evo/terminal.py) and the run's TensorBoard log (RUN_DIR/tb, evo/tblog.py)."""

    PICTURE_EVERY_S = 10.0  # RUN_DIR/progress.png is redrawn at most this often (and at close)
    IMAGE_EVERY = 5  # evaluations between two "progress" images in TensorBoard (and one at close)

    def __init__(self, run_dir: Path, quiet: bool = False, run=None):
        """`run` (an evo.run.Run) enables the progress picture; without it there is none."""
        self.terminal = Terminal(quiet=quiet)
        self.tb = TensorBoardLog(run_dir)
        self.run = run
        self.picture_path = Path(run_dir) / "progress.png"
        self._state: RunState | None = None
        self._seq = 0  # the latest finished evaluation
        self._drawn_at = -float("inf")  # monotonic time of the last progress.png
        self._drawn_seq = self._image_seq = 0  # the evaluations the last picture and image showed
        self._picture_failed = False

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
        self.tb.evaluation_session(seq, genome, evaluation.purpose, result, scores.get("fitness"))
        self.tb.flush()
        self.terminal.finished(seq, evaluation, genome, result, state)
        self._state, self._seq = state, seq

    def progress(self, final: bool = False) -> None:
        """Redraw RUN_DIR/progress.png and log the "progress" image when they are due (always when `final`).
        The scheduler calls it once the freed slots have their next jobs: drawing takes a quarter second."""
        if self.run is None or self._state is None or self._picture_failed:
            return
        seq = self._seq
        picture = seq > self._drawn_seq and (final or time.monotonic() - self._drawn_at >= self.PICTURE_EVERY_S)
        image = seq > self._image_seq and (final or seq - self._image_seq >= self.IMAGE_EVERY)
        if not (picture or image):
            return
        try:
            from evo import plots  # matplotlib: only for a run that draws its picture

            figure = plots.progress_figure(self.run, self._state)
            if picture:
                plots.save(figure, self.picture_path)
                self._drawn_at, self._drawn_seq = time.monotonic(), seq
            if image:
                self.tb.image("progress", figure, seq)
                self._image_seq = seq
        except Exception as exc:  # a picture is a view: it never stops the run
            self._picture_failed = True
            self.note(f"warning: the progress picture cannot be drawn ({type(exc).__name__}: {exc}); "
                      "the run goes on without it")

    def close(self) -> None:
        self.progress(final=True)
        self.terminal.close()
        self.tb.close()
