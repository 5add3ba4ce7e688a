"""The runner's clock for a slot: when a genome connected and submitted, as the runner measured it.

`gpt.lab` runs in the genome's process and is untrusted, so it only *says* `connect` and
`submit`, one word each on a pipe the runner owns (the harness's starter says `ready` on it before
any genome code exists); the runner notes when each word arrives
(`ClockPipe`) and judges the slot from those times and its own `go` and exit times
(`clock_verdict`). Nothing the genome writes is read as a number.
"""
from __future__ import annotations

import os
import threading
import time


CLOCK_PIPE_CAP = 65536  # bytes of clock messages the runner reads from one slot; the rest is drained


def budget_tolerance(budget_s: float) -> float:
    """How far past the clock a genome may submit: one slow step or a final print, not more."""
    return max(2.0, 0.05 * budget_s)


def default_export_allowance(budget_s: float) -> float:
    """How long after `submit` the genome may take to export and exit. The runner cannot tell
    export from training, so this bounds what a genome that says `submit` early can gain."""
    return max(5.0, 0.05 * budget_s)


class ClockPipe:
    """The runner's clock for one slot. The genome's lab writes `connect` and `submit` on a pipe;
    a thread of the runner notes when each word first *arrives*. The genome can delay a word
    or send it early, never make the runner read a time it did not measure."""

    WORDS = ("ready", "connect", "submit")  # `ready`: the starter's imports are done (gpt.starter), before any genome

    def __init__(self):
        self.read_fd, self.write_fd = os.pipe()
        self.times: dict[str, float] = {}
        self.ready = threading.Event()  # set at `ready`, or when the pipe closes (the starter died)
        self._thread = threading.Thread(target=self._read, daemon=True, name="evo-slot-clock")

    def start(self) -> None:
        """Call after the genome is spawned: the runner's copy of the write end is closed, so the
        pipe ends when every process of the slot is gone."""
        os.close(self.write_fd)
        self._thread.start()

    def join(self, timeout: float = 5.0) -> dict[str, float]:
        self._thread.join(timeout)
        return dict(self.times)

    def _read(self) -> None:
        buf, total = b"", 0
        with os.fdopen(self.read_fd, "rb", buffering=0) as f:
            for chunk in iter(lambda: f.read(4096), b""):
                now = time.monotonic()
                total += len(chunk)
                if total > CLOCK_PIPE_CAP:
                    continue
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    word = line.strip().decode("ascii", errors="replace")
                    if word in self.WORDS:
                        self.times.setdefault(word, now)
                    if word == "ready":
                        self.ready.set()
        self.ready.set()


def clock_verdict(times: dict, go: float, exited: float, budget_s: float, export_allowance_s: float) -> dict:
    """The budget probe, from the runner's own timestamps only.

    The clock starts at `go`, when the genome's first line runs (the starter's imports are done
    before it), and stops at `submit`: whatever a genome does before `connect` is on the clock, so
    there is no untimed region before it to train in. The genome fails the probe if it never said
    `connect` or `submit`, said `submit` past the deadline by more than the tolerance, or took longer
    than the export allowance from `submit` to exit."""
    connect, submit = times.get("connect"), times.get("submit")
    deadline = go + budget_s
    overrun = submit - deadline if submit is not None else None
    export_s = exited - submit if submit is not None else None
    tolerance = budget_tolerance(budget_s)
    why = None
    if connect is None:
        why = "the genome never said connect on the harness clock (its clock pipe was closed or silenced)"
    elif submit is None:
        why = "the artifact did not come through run.submit() (no submit on the harness clock)"
    elif overrun > tolerance:
        why = f"submitted {overrun:.1f} s after the budget ran out (tolerance {tolerance:g} s)"
    elif export_s > export_allowance_s:
        why = f"took {export_s:.1f} s from submit to exit (export allowance {export_allowance_s:g} s)"
    return {"pass": why is None, "detail": why, "overrun_s": overrun, "tolerance_s": tolerance,
            "export_s": export_s, "export_allowance_s": export_allowance_s,
            "startup_s": (connect - go) if connect is not None else None,
            "train_s": (submit - go) if submit is not None else None}


