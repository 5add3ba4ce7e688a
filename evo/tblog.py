"""TensorBoard event files for a run (RUN_DIR/tb/): one writer, named scalars, text for new bests."""
from __future__ import annotations

import math
from pathlib import Path

from evo.genome import diff_text


class TensorBoardLog:
    """Writes the run's curves. `tensorboard --logdir logs` shows every run side by side."""

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))

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

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
