"""The terminal's side of a running run: one line per event, readable in a terminal and a log file."""
from __future__ import annotations

import sys

from rich.console import Console

from evo.genome import Genome
from evo.journal import Evaluation
from evo.state import RunState
from gpt.result import SlotResult


class Terminal:
    """Lines on stderr (rich); `quiet` prints nothing."""

    def __init__(self, quiet: bool = False, file=None):
        self.console = Console(file=file or sys.stderr, highlight=False, quiet=quiet,
                               width=None if (file or sys.stderr).isatty() else 200)

    def note(self, text: str) -> None:
        self.console.print(f"[bold]{text}[/bold]")

    def started(self, slot: str, evaluation: Evaluation, genome: Genome) -> None:
        what = evaluation.purpose if evaluation.purpose != "child" else f"{genome.operator}: {genome.rationale}"
        self.console.print(f"  {slot}: start {evaluation.genome_id} ({what[:100]})", style="dim")

    def finished(self, seq: int, evaluation: Evaluation, genome: Genome, result: SlotResult, state: RunState) -> None:
        self.console.print(self.line(seq, state.config.evals, evaluation, genome, result, state),
                           style={"ok": None, "flagged": "red", "failed": "yellow"}.get(result.status))

    @staticmethod
    def line(seq: int, limit: int, evaluation: Evaluation, genome: Genome, result: SlotResult,
             state: RunState) -> str:
        seed, best = state.seed, state.best
        if result.status == "ok":
            outcome = f"val {result.val_bpb:.4f} on {result.scored_tokens or '?'} tokens"
            if seed and seed.mean is not None:
                outcome += f" ({result.val_bpb - seed.mean:+.4f} vs seed)"
        else:
            outcome = f"{result.status}: {result.reason}"
        if result.contended:
            outcome += f" (contended: CPU share {result.cpu_share or 0:.2f}, run again)"
        line = f"[{seq}/{limit}]" if limit else f"[{seq}]"
        line += f" {evaluation.genome_id} {evaluation.purpose:<6} {genome.operator:<15} {outcome}"
        if best and best.mean is not None and seed and seed.mean is not None:
            line += f" | best {best.mean:.4f} ({seed.mean - best.mean:+.4f} over seed"
            line += f", floor {state.floor:.4f})" if state.floor is not None else ")"
        return line

    def close(self) -> None:
        pass
