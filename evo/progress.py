"""What the terminal shows while a run goes: slot starts, finished evaluations, the best so far."""
from __future__ import annotations

import sys

from rich.console import Console


class Progress:
    """One line per event, readable in a terminal and in a log file."""

    def __init__(self, quiet: bool = False):
        self.console = Console(file=sys.stderr, highlight=False, quiet=quiet,
                               width=None if sys.stderr.isatty() else 200)

    def note(self, text: str) -> None:
        self.console.print(f"[bold]{text}[/bold]")

    def started(self, slot: str, row, genome) -> None:
        what = row["purpose"] if row["purpose"] != "child" else f"{genome.operator}: {genome.rationale}"
        self.console.print(f"  {slot}: start {row['genome_id']} ({what[:100]})", style="dim")

    def finished(self, seq: int, limit: int, row, genome, result: dict, rec, best, seed, floor) -> None:
        status = result.get("status")
        val = result.get("val_bpb")
        left = f"{seq}/{limit}" if limit else f"{seq}"
        if status == "ok":
            outcome = f"val {val:.4f} on {result.get('scored_tokens', '?')} tokens"
            if seed and seed.mean is not None:
                outcome += f" ({val - seed.mean:+.4f} vs seed)"
        else:
            outcome = f"{status}: {result.get('reason')}"
        if result.get("contended"):
            outcome += f" (contended: CPU share {result.get('cpu_share', 0):.2f}, run again)"
        line = f"[{left}] {row['genome_id']} {row['purpose']:<6} {genome.operator:<15} {outcome}"
        if best and best.mean is not None and seed and seed.mean is not None:
            margin = seed.mean - best.mean
            line += f" | best {best.mean:.4f} ({margin:+.4f} over seed"
            line += f", floor {floor:.4f})" if floor is not None else ")"
        style = {"ok": None, "flagged": "red", "failed": "yellow"}.get(status)
        self.console.print(line, style=style)
