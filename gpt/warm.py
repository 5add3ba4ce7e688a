"""Warm slots: the next genome's interpreter, started before this slot is scored.

A cold slot's fixed cost is mostly its genome's Python process importing torch (the scorer is kept
between jobs: gpt.scorer). When a job asks for it (`SlotJob.warm_dir`), the runner starts that
process for the *next* job of the same shape, from the slot's own long-lived thread, so its imports
overlap this job instead of the next genome's clock. Under bwrap it starts in the last seconds of
this genome's budget (`early_start`: about as long before the deadline as the last warm slot's imports
took), so they are done when scoring begins and scoring runs alone: the two sandboxes have their own
PID, mount, network and IPC namespaces, and the waiting interpreter holds no genome code. Under a
weaker sandbox, where a genome could see or signal it, it starts once this genome is dead and its
imports overlap the scoring. A warm slot is a fresh
`GenomeProcess` (gpt.training), used once, in a staging folder of its own that becomes the next
slot's out dir contents; no genome code runs in them before the next job's
`go`. A shape is everything fixed when a sandbox starts: the level, the dataset (its train file's
identity too), the device, threads, environment, caps and the warm dir, which a run gives each slot
its own of. A warm slot nobody takes within `IDLE_S` is ended, and so is every one left when the
process exits; a Dask worker ends its own when the controller's pool shuts down
(`gpt.worker.end_warm_slots`), and a cancelled job starts none.
"""
from __future__ import annotations

import atexit
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gpt import scorer as scorers
from gpt.training import GenomeProcess

if TYPE_CHECKING:
    from gpt.job import SlotJob

IDLE_S = 600.0  # a warm slot waits this long for its job (its processes hold memory meanwhile)
FIRST_IMPORT_GUESS_S = 3.0  # a warm slot's imports (spawn to `ready`) before one has been measured
EARLY_LEAD = 1.5  # an early warm slot starts this many times its imports' last duration before the deadline
MOVED = ("work", "slot_spec.json")  # what a warm slot's stage holds, moved into the out dir


@dataclass
class WarmSlot:
    stage: Path
    genome: GenomeProcess

    def discard(self) -> None:
        self.genome.discard()
        shutil.rmtree(self.stage, ignore_errors=True)

    def move_into(self, out: Path) -> None:
        """The stage's files become the slot's own (work dir, spec), as a cold slot has them."""
        for name in MOVED:
            if (self.stage / name).exists():
                target = out / name
                if target.is_dir():
                    shutil.rmtree(target)  # never nested inside a stale one
                shutil.move(str(self.stage / name), str(target))
        shutil.rmtree(self.stage, ignore_errors=True)


_READY: dict[tuple, tuple[WarmSlot, threading.Timer]] = {}
_SWEPT: set[Path] = set()  # warm dirs whose leftovers from earlier processes are gone
_LOCK = threading.Lock()
_IMPORT_S = {"last": FIRST_IMPORT_GUESS_S}  # the last taken warm slot's spawn-to-ready seconds


def shape(job: SlotJob, level: str) -> tuple:
    """What a sandbox fixes when it starts: two jobs of one shape can use each other's warm slot."""
    from gpt.dataset import Dataset

    train = Dataset(Path(job.dataset).resolve()).train_path.stat()  # a re-split dataset is another dataset
    return (level, str(Path(job.dataset).resolve()), train.st_ino, train.st_mtime_ns, job.device, job.threads,
            tuple(sorted(job.env.items())), job.limits(), job.warm_dir)


def take(job: SlotJob, level: str) -> WarmSlot | None:
    """The warm slot started for a job of this shape, if one is ready and its process lives."""
    with _LOCK:
        entry = _READY.pop(shape(job, level), None)
    if entry is None:
        return None
    warm, timer = entry
    timer.cancel()
    _note_import_time(warm.genome)
    if warm.genome.alive():
        return warm
    warm.discard()
    return None


def early_start(job: SlotJob, level: str) -> float | None:
    """Seconds after `go` at which to start the next job's warm slot while this genome still trains
    (never before half its budget), or None where it must wait until this genome is dead."""
    if not job.warm_dir or level != "bwrap":
        return None
    return max(job.budget_s / 2, job.budget_s - EARLY_LEAD * _IMPORT_S["last"])


def _note_import_time(genome: GenomeProcess) -> None:
    """How long this warm slot's imports took, beside whatever ran then; one not done yet doubles the guess."""
    ready = genome.clock.times.get("ready")
    took = ready - genome.spawned_at if ready is not None else 2 * _IMPORT_S["last"]
    _IMPORT_S["last"] = min(took, 60.0)


def prepare(job: SlotJob, level: str) -> None:
    """Start the next job's genome interpreter now (at `early_start`, or once this job's genome is dead)."""
    if not job.warm_dir:
        return
    sweep(Path(job.warm_dir))
    stage = Path(job.warm_dir) / uuid.uuid4().hex[:12]
    try:
        warm = WarmSlot(stage, GenomeProcess(job, level, stage))
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    key = shape(job, level)
    timer = threading.Timer(IDLE_S, _expire, args=(key, warm))
    timer.daemon = True
    with _LOCK:
        old = _READY.pop(key, None)
        _READY[key] = (warm, timer)
    timer.start()
    if old:
        old[1].cancel()
        old[0].discard()


def sweep(warm_dir: Path) -> None:
    """Once per process and warm dir, before its first stage: remove the stages an earlier process left
    there (a controller that was killed; their processes died with it, PR_SET_PDEATHSIG). Later, this
    process's own stages are either waiting, in use by a slot, or removed by `discard`/`move_into`."""
    with _LOCK:
        if warm_dir in _SWEPT:
            return
        _SWEPT.add(warm_dir)
    if warm_dir.is_dir():
        for stage in warm_dir.iterdir():
            shutil.rmtree(stage, ignore_errors=True)


def _expire(key: tuple, warm: WarmSlot) -> None:
    with _LOCK:
        if _READY.get(key, (None,))[0] is not warm:
            return
        del _READY[key]
    warm.discard()


def discard_all() -> None:
    """End every warm slot and every idle scorer of this process (the run is over, or Ctrl-C)."""
    with _LOCK:
        entries = list(_READY.values())
        _READY.clear()
    for warm, timer in entries:
        timer.cancel()
        warm.discard()
    scorers.discard_idle()


atexit.register(discard_all)
