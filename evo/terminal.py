"""The terminal's side of a running run.

On a terminal (stderr is a TTY and the run is not `--quiet`) the bottom of the screen is a live
view, redrawn twice a second: the progress (evaluations done of the limit), the elapsed time and
an ETA, each slot's state (genome, operator, seconds into the slot), the last finished evaluation
with its steps and throughput, and the best so far. Above it, one line per finished evaluation and
per note stays in the scrollback. Anywhere else (a log file, a pipe) the same events are plain
lines, one per event, so that logs stay greppable. `Terminal.render(width)` gives the live view
as text, for tests and for anyone who wants a snapshot.

The ETA is the sooner of two ends: the evaluations left at this session's evaluation rate, and
the session's hours limit (`hours`, after which no new slot starts).
"""
from __future__ import annotations

import io
import sys
import threading
import time
from dataclasses import dataclass

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from evo.genome import Genome
from evo.journal import Evaluation
from evo.state import RunState
from gpt.result import SlotResult

REFRESH_PER_SECOND = 2
RATIONALE_CHARS = 100  # the rationale of a start line, cut at a word boundary
PLAIN_WIDTH = 200  # lines written to a file or a pipe
PURPOSE_TEXT = {"noise": "a noise repeat of the seed", "reeval": "re-evaluation of a candidate",
                "rerun": "again: its slot was starved", "export": "export"}
STATUS_STYLE = {"ok": None, "flagged": "red", "failed": "yellow"}


def ellipsize(text: str | None, limit: int) -> str:
    """The first line of `text`, at most `limit` characters: cut at a word boundary, ending in '…'."""
    lines = (text or "").strip().splitlines()
    line = lines[0].strip() if lines else ""
    if len(line) <= limit and len(lines) <= 1:
        return line
    cut = line[:max(limit - 1, 1)]
    space = cut.rfind(" ")
    if len(line) > limit and space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:") + "…"


def hms(seconds: float) -> str:
    seconds = max(round(seconds), 0)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def throughput(result: SlotResult) -> str:
    """Steps and steps per train second (the genome's own `steps:` line; the result holds no count of
    training tokens, so no tokens/s)."""
    if not result.steps:
        return ""
    text = f"{result.steps} steps"
    if result.train_seconds:
        text += f" in {result.train_seconds:.1f} s ({result.steps / result.train_seconds:.1f} steps/s)"
    return text


@dataclass
class _Busy:
    """What a slot is doing: the evaluation, its genome and when it started (the terminal's clock)."""

    evaluation: Evaluation
    genome: Genome
    since: float


class Terminal:
    """The live view on a terminal, plain lines elsewhere (rich, on stderr); `quiet` prints nothing.

    `live`: None decides from the file (a TTY gets the live view); True forces it (the console then
    writes terminal codes even into a file). `width`: the console width (default: the terminal's, or
    PLAIN_WIDTH off a terminal). `clock`: the time source (tests pass their own). `slots`: slot names to
    show as idle before anything starts in them. `config`: the run's config, for the limits before the
    first evaluation finishes (later they come from the run state)."""

    def __init__(self, quiet: bool = False, file=None, *, live: bool | None = None, width: int | None = None,
                 clock=time.time, slots=(), config=None):
        out = file or sys.stderr
        tty = bool(getattr(out, "isatty", lambda: False)())
        self.live = bool(tty if live is None else live) and not quiet
        self.console = Console(file=out, highlight=False, quiet=quiet, force_terminal=True if self.live else None,
                               width=width or (None if tty else PLAIN_WIDTH))
        self.clock = clock
        self.started_at = clock()
        self.config = config
        self.lock = threading.RLock()  # notes arrive from proposal threads; the live view redraws in its own
        self.slots: dict[str, _Busy | None] = {name: None for name in slots}
        self.last: tuple[int, Evaluation, Genome, SlotResult] | None = None
        self.state: RunState | None = None
        self.done = 0  # finished evaluations of the run (all sessions)
        self.finished_here = 0  # finished in this session: the rate behind the ETA
        self._live: Live | None = None

    # ------------------------------------------------------------ events (the reporter calls these)
    def note(self, text: str) -> None:
        self.console.print(Text(text, style="bold"), soft_wrap=not self.live)

    def started(self, slot: str, evaluation: Evaluation, genome: Genome) -> None:
        with self.lock:
            self.slots[slot] = _Busy(evaluation, genome, self.clock())
        if self.live:
            self._start_live()
            return
        line = self.start_line(slot, evaluation, genome, self.console.width)
        self.console.print(Text(line, style="dim"), no_wrap=True, overflow="ellipsis")

    def finished(self, seq: int, evaluation: Evaluation, genome: Genome, result: SlotResult, state: RunState) -> None:
        with self.lock:
            self.state, self.config = state, state.config
            self.done = state.journal.count_done()
            self.finished_here += 1
            self.last = (seq, evaluation, genome, result)
            for name, busy in self.slots.items():
                if busy is not None and busy.evaluation.id == evaluation.id:
                    self.slots[name] = None
            if evaluation.slot and evaluation.slot not in self.slots:
                self.slots[evaluation.slot] = None
            line = self.line(seq, state.config.evals, evaluation, genome, result, state)
            if not self.live:
                eta = self.eta()
                line += f" | ETA {hms(eta[0])}" if eta else ""
        if self.live:
            self._start_live()
        # on a terminal rich wraps the line at words; in a log it stays one line, whole (greppable)
        self.console.print(Text(line), style=STATUS_STYLE.get(result.status), soft_wrap=not self.live)

    def close(self) -> None:
        """Stop the live view; its last frame stays on the screen."""
        with self.lock:
            live, self._live = self._live, None
        if live is not None:
            live.stop()

    def _start_live(self) -> None:
        # started on the first slot (inside the scheduler's loop, whose `finally` closes the reporter), so
        # that nothing before the loop can leave a live display and a hidden cursor behind
        with self.lock:
            if self._live is None:
                self._live = Live(console=self.console, get_renderable=self.view,
                                  refresh_per_second=REFRESH_PER_SECOND, transient=False,
                                  redirect_stdout=False)  # stdout may be a file: it keeps what is printed to it
                self._live.start()

    # ------------------------------------------------------------ lines
    @staticmethod
    def start_line(slot: str, evaluation: Evaluation, genome: Genome, width: int = PLAIN_WIDTH) -> str:
        """`slot: start ID operator: rationale`, the rationale cut at a word so that the line fits `width`."""
        head = f"  {slot}: start {evaluation.genome_id} "
        if evaluation.purpose != "child":
            return head + f"{evaluation.purpose} ({PURPOSE_TEXT.get(evaluation.purpose, evaluation.purpose)})"
        head += f"{genome.operator}: "
        return head + ellipsize(genome.rationale, max(min(RATIONALE_CHARS, width - len(head)), 12))

    @staticmethod
    def line(seq: int, limit: int, evaluation: Evaluation, genome: Genome, result: SlotResult,
             state: RunState) -> str:
        """One finished evaluation: its outcome, steps and throughput, and the best so far."""
        seed, best = state.seed, state.best
        if result.status == "ok":
            outcome = f"val {result.val_bpb:.4f} on {result.scored_tokens or '?'} tokens"
            if seed and seed.mean is not None:
                outcome += f" ({result.val_bpb - seed.mean:+.4f} vs seed)"
            steps = throughput(result)
            outcome += f", {steps}" if steps else ""
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

    # ------------------------------------------------------------ the live view
    def eta(self) -> tuple[float, str] | None:
        """(seconds left, why): the sooner of the evaluation rate's end and the hours limit's."""
        config, now = self.config, self.clock()
        if config is None:
            return None
        ends = []
        if config.evals and self.finished_here:
            rate = self.finished_here / max(now - self.started_at, 1e-9)
            ends.append((max(config.evals - self.done, 0) / rate, f"at {rate * 60:.1f} evaluations/min"))
        if config.hours:
            ends.append((max(self.started_at + config.hours * 3600 - now, 0.0), f"the {config.hours:g} h limit"))
        return min(ends) if ends else None

    def view(self) -> Group:
        """The live view: progress, time, slots, the last evaluation and the best (each fits the width)."""
        with self.lock:
            return Group(self._progress(), self._times(), self._slots(), self._outcomes())

    def _progress(self) -> Table:
        limit = self.config.evals if self.config else 0
        grid = Table.grid(padding=(0, 1), expand=True)
        grid.add_column(no_wrap=True)
        if self.config is None:
            grid.add_row(Text("evaluations: none finished in this session yet", style="bold"))
            return grid
        if not limit:
            grid.add_row(Text(f"evaluations {self.done} done (no limit)", style="bold"))
            return grid
        grid.add_column(ratio=1)
        grid.add_column(no_wrap=True, justify="right")
        grid.add_row(Text(f"evaluations {self.done}/{limit}", style="bold"),
                     ProgressBar(total=limit, completed=min(self.done, limit)), f"{min(self.done / limit, 1):.0%}")
        return grid

    def _times(self) -> Text:
        text = f"elapsed {hms(self.clock() - self.started_at)}"
        eta = self.eta()
        text += f" · ETA {hms(eta[0])} ({eta[1]})" if eta else " · ETA unknown until an evaluation finishes"
        return Text(text)

    def _slots(self) -> Table:
        grid = Table.grid(padding=(0, 1), expand=True)
        for _ in range(4):
            grid.add_column(no_wrap=True, overflow="ellipsis")
        grid.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
        now = self.clock()
        for name, busy in sorted(self.slots.items()):
            if busy is None:
                grid.add_row(Text(name, style="bold"), Text("idle", style="dim"), "", "", "")
                continue
            ev, genome = busy.evaluation, busy.genome
            seconds = f"{now - busy.since:.0f}s"  # the whole slot: startup, training, export and scoring
            what = genome.operator if ev.purpose == "child" else ev.purpose
            why = ellipsize(genome.rationale, RATIONALE_CHARS) if ev.purpose == "child" \
                else PURPOSE_TEXT.get(ev.purpose, "")
            grid.add_row(Text(name, style="bold"), ev.genome_id, what, seconds, Text(why, style="dim"))
        if not self.slots:
            grid.add_row(Text("slots", style="bold"), Text("none started yet", style="dim"), "", "", "")
        return grid

    def _outcomes(self) -> Table:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True, style="bold")
        grid.add_column()
        if self.last:
            seq, ev, _, result = self.last
            outcome = f"val {result.val_bpb:.4f} bpb" if result.status == "ok" else f"{result.status}: {result.reason}"
            steps = throughput(result)
            text = f"#{seq} {ev.genome_id} {ev.purpose}: {outcome}" + (f", {steps}" if steps else "")
            grid.add_row("last", Text(text, style=STATUS_STYLE.get(result.status)))
        state = self.state
        best, seed = (state.best, state.seed) if state else (None, None)
        if best and best.mean is not None and seed and seed.mean is not None:
            grid.add_row("best", f"{state.incumbent} {best.mean:.4f} bpb over {len(best.vals)} evaluations "
                                 f"({seed.mean - best.mean:+.4f} over seed, floor {state.floor:.4f})")
        else:
            grid.add_row("best", Text("none yet: the seed's noise evaluations come first", style="dim"))
        return grid

    def render(self, width: int | None = None) -> str:
        """The live view as plain text, `width` columns wide (default: this console's width)."""
        buffer = io.StringIO()
        Console(file=buffer, width=width or self.console.width, color_system=None, highlight=False,
                force_terminal=False).print(self.view())
        return buffer.getvalue()
