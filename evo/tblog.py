"""TensorBoard event files for a run (RUN_DIR/tb/): one writer for the run's curves, text for new bests,
the progress picture as an image, a custom-scalars page, and one HParams session per finished evaluation.

    RUN_DIR/tb/                       scalars eval/*, run/*, population/*; text; image "progress";
                                      the custom-scalars layout
    RUN_DIR/tb/hparams/NNNNN-GENOME/  one HParams session per evaluation (NNNNN = completion number):
                                      its knob values, operator, purpose, status, genome and structure id,
                                      and the metrics hparams/val_bpb and hparams/fitness

No experiment summary is written: TensorBoard's HParams plugin then derives the columns from the
sessions themselves, so a knob that appears later in the run (an LLM edit adds one) still gets its column.
"""
from __future__ import annotations

import ast
import functools
import math
import re
import time
from pathlib import Path

from evo.genome import diff_text, genome_id

HPARAMS_DIR = "hparams"
KNOB_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")  # the knob operators' definition (evo/operators/knobs.py)
METRICS = ("val_bpb", "fitness")  # logged in each session as hparams/<name>
LAYOUT = {"evo": {
    "val_bpb: each evaluation and the best": ["Multiline", [r"^eval/val_bpb$", r"^run/best_val_bpb$"]],
    "best val_bpb ± noise floor": ["Margin", ["run/best_val_bpb", "run/best_minus_floor", "run/best_plus_floor"]],
    "noise floor": ["Multiline", [r"^run/noise_floor$"]],
    "fitness: each evaluation and the population": ["Multiline", [r"^eval/fitness$", r"^population/"]],
    "slot utilization": ["Multiline", [r"^run/slot_utilization$"]],
}}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@functools.lru_cache(maxsize=512)
def knob_values(source: str) -> dict:
    """The script's UPPER_CASE knobs as HParams values (tuples as text); {} when they cannot be read
    (the source does not parse, a knob annotation is malformed, or the knob operators are not installed)."""
    try:
        from evo.operators.knobs import find_knobs  # the operators package: only when a session is logged

        knobs = find_knobs(source)
    except Exception:  # the reporter only displays: a genome it cannot read gets no knob columns
        return {}
    return {k.name: (str(k.value) if isinstance(k.value, tuple) else k.value) for k in knobs}


def _is_knob_literal(node) -> bool:
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    scalar = (bool, int, float, str)
    return isinstance(value, scalar) or (isinstance(value, tuple) and all(isinstance(v, scalar) for v in value))


@functools.lru_cache(maxsize=512)
def structure_id(source: str) -> str:
    """The id of the program with its knob values left out: genomes that differ only in knob values
    (what the knob operators make) share it, a change of code (an LLM edit) makes a new one."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return genome_id(source)
    for stmt in tree.body:
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else \
            stmt.target if isinstance(stmt, ast.AnnAssign) and stmt.value is not None else None
        if isinstance(target, ast.Name) and KNOB_NAME.match(target.id) and _is_knob_literal(stmt.value):
            stmt.value = ast.Constant("<knob>")
    return genome_id(ast.unparse(tree))


def evaluation_hparams(genome, purpose: str, status: str) -> dict:
    """An evaluation's HParams values: its genome's knobs, operator, purpose, status, genome and structure id."""
    return {**knob_values(genome.source), "operator": genome.operator, "purpose": purpose, "status": status,
            "genome": genome.id, "structure": structure_id(genome.source)}


def _session_summaries(name: str, hparams: dict, status: str, start: float):
    """The session's start and end as HParams plugin summaries (tensorboard's own protos, no TensorFlow)."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2, summary_v2

    begin = summary_v2.hparams_pb(hparams, trial_id=name, start_time_secs=start)
    end_info = plugin_data_pb2.SessionEndInfo(
        status=api_pb2.STATUS_SUCCESS if status == "ok" else api_pb2.STATUS_FAILURE, end_time_secs=time.time())
    end = summary_pb2.Summary()
    end.value.add(tag=metadata.SESSION_END_INFO_TAG, tensor=metadata.NULL_TENSOR,
                  metadata=metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(session_end_info=end_info)))
    return begin, end


class TensorBoardLog:
    """Writes the run's curves. `tensorboard --logdir logs` shows every run side by side."""

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(run_dir) / "tb"
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.writer.add_custom_scalars(LAYOUT)

    def scalar(self, tag: str, value, step: int) -> None:
        if value is not None and math.isfinite(value):
            self.writer.add_scalar(tag, value, step)

    def evaluation(self, step: int, val_bpb, answer, penalty, fitness) -> None:
        """Per evaluation (step = evaluation index)."""
        self.scalar("eval/val_bpb", val_bpb, step)
        self.scalar("eval/heldout_answer", answer, step)
        self.scalar("eval/penalty", penalty, step)
        self.scalar("eval/fitness", fitness, step)

    def run_state(self, step: int, best_val_bpb, noise_floor, utilization) -> None:
        self.scalar("run/best_val_bpb", best_val_bpb, step)
        self.scalar("run/noise_floor", noise_floor, step)
        self.scalar("run/slot_utilization", utilization, step)
        if best_val_bpb is not None and noise_floor is not None:  # the band of the custom-scalars margin chart
            self.scalar("run/best_minus_floor", best_val_bpb - noise_floor, step)
            self.scalar("run/best_plus_floor", best_val_bpb + noise_floor, step)

    def population(self, step: int, mean_fitness, median_fitness) -> None:
        self.scalar("population/mean_fitness", mean_fitness, step)
        self.scalar("population/median_fitness", median_fitness, step)

    def text(self, tag: str, text: str, step: int) -> None:
        # four-space indent renders as a code block in TensorBoard's markdown
        self.writer.add_text(tag, "\n".join("    " + line for line in text.splitlines()), step)
        self.writer.flush()

    def new_best(self, step: int, genome_id: str, val_bpb: float, parent_source: str | None, source: str) -> None:
        diff = diff_text(parent_source or "", source, "parent", genome_id)
        self.text("best", f"new best {genome_id}: val_bpb {val_bpb:.4f}\n\n{diff}", step)

    def image(self, tag: str, figure, step: int) -> None:
        """A matplotlib figure as an image (rendered on its own Agg canvas, no display)."""
        import numpy as np
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
        canvas.draw()
        self.writer.add_image(tag, np.asarray(canvas.buffer_rgba())[..., :3], step, dataformats="HWC")

    def session(self, step: int, name: str, hparams: dict, metrics: dict, status: str,
                start: float | None = None) -> Path:
        """One HParams session in its own run (RUN_DIR/tb/hparams/NAME): start info, the finite metrics
        as scalars hparams/<metric> at `step`, end info. Returns its directory."""
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        directory = self.log_dir / HPARAMS_DIR / name
        begin, end = _session_summaries(name, hparams, status, start or time.time())
        scalars = summary_pb2.Summary()
        for metric, value in metrics.items():
            if _finite(value):
                scalars.value.add(tag=f"{HPARAMS_DIR}/{metric}", simple_value=float(value))
        writer = EventFileWriter(str(directory))
        try:
            for summary in (begin, scalars, end):
                writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
        finally:
            writer.close()
        return directory

    def evaluation_session(self, step: int, genome, purpose: str, result, fitness) -> Path:
        """A finished evaluation as an HParams session: val_bpb only when it is trustworthy (status ok)."""
        val = result.val_bpb if result.status == "ok" else None
        return self.session(step, f"{step:05d}-{genome.id}", evaluation_hparams(genome, purpose, result.status),
                            {"val_bpb": val, "fitness": fitness}, result.status)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
