"""The genome's training process: spawned in its sandbox, clocked by the runner, killed at the hard limit.

A `GenomeProcess` is step 3-5 of a slot (see gpt.runner): `python -m gpt.starter` under the sandbox
level with a scrubbed environment and the runner's clock pipe, its imports done while it waits;
`run()` hands it the genome and the slot spec, says `go` (the clock starts), watches it
(gpt.processes), kills it at `budget + grace`, and ends every process the slot left behind. A cold
slot spawns it and says go at once; a warm one (gpt.warm) spawned it while the previous
genome was scored. It returns what the runner measured (`Training`); nothing the genome wrote is
read here except its stdout and stderr, into size-capped files.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import gpt
from gpt import processes
from gpt import sandbox as sandboxing
from gpt.clock import ClockPipe, clock_verdict, default_export_allowance
from gpt.protocol import CLOCK_FD_ENV, SPEC_ENV, SlotSpec
from gpt.sealing import seal

if TYPE_CHECKING:
    from collections.abc import Callable

    from gpt.job import SlotJob

STDERR_TAIL_CHARS = 3000
STARTER_WAIT_S = 120.0  # the most a job waits for its starter's imports before it says go regardless
STOP_WAIT_S = 3.0  # how long the sandbox gets to clean up after SIGTERM before everything is killed
MEMORY_ERRORS = re.compile(r"MemoryError|[Cc]annot allocate memory|can.t allocate memory|std::bad_alloc|"
                           r"out of memory|OutOfMemoryError")


def default_grace(budget_s: float) -> float:
    """Time past the budget before the hard kill. The kill clock starts at `go` (the harness's imports
    are done by then), the budget at connect: grace covers the genome's own imports, a slow connect
    and export."""
    return max(20.0, 0.2 * budget_s)


@dataclass
class Training:
    """What the runner saw of one genome process: its own measurements, never the genome's word."""

    work: Path  # the genome's work dir
    sandbox: str  # the level it ran under
    returncode: int | None  # of the sandbox's root process
    timed_out: bool  # killed at budget + grace (not by a watchdog breach)
    wall_seconds: float  # spawn to the end of every process of the slot
    grace_s: float
    breach: tuple[str, str] | None  # (reason, detail) of a limit the slot broke
    clock: dict  # gpt.clock.clock_verdict: the budget probe and the times it is made of
    limits: dict  # Limits.describe()
    leftover_processes: int | None  # what the supervisor killed after the genome exited by itself
    peak_memory_mb: int
    peak_procs: int
    cpu_seconds: float
    train_cpu_seconds: float | None  # of cpu_seconds, those spent from go to submit (None: no submit)
    escaped_processes: int
    pid: int  # of the slot's root process (a fresh one for every genome)
    starter_wait_s: float  # how long the job waited for the starter's imports (about 0 when warm)


_LIVE_SLOTS: dict = {}  # pid -> the GenomeProcess of every genome process running now
_LIVE_LOCK = threading.Lock()


def kill_all_slots() -> None:
    """End every running slot of this process (Ctrl-C in the controller): nothing is left running."""
    with _LIVE_LOCK:
        live = list(_LIVE_SLOTS.values())
    for genome in live:
        stop_slot(genome.proc, genome.procs)


def stop_slots_run_by(thread_id: int) -> None:
    """End the genome the thread `thread_id` is running (a cancelled Dask job's), not its neighbours'.
    The job then finishes at once, as a crash nobody reads."""
    with _LIVE_LOCK:
        live = [genome for genome in _LIVE_SLOTS.values() if genome.run_by == thread_id]
    for genome in live:
        genome.cancelled = True  # its job neither scores it nor warms a next slot: no next job is coming
        stop_slot(genome.proc, genome.procs)


def genome_env(spec_path: Path, work: Path, threads: int, extra: dict, token: str | None = None) -> dict:
    """The genome's whole environment: built from scratch, never copied from the parent.

    `token` marks every process of the slot (EVO_SLOT_TOKEN) so leftovers can be found."""
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(work),
        "TMPDIR": str(work),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": str(Path(gpt.__file__).resolve().parent.parent),
        SPEC_ENV: str(spec_path),
    }
    if token:
        env[processes.TOKEN_ENV] = token
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    env.update({k: str(v) for k, v in extra.items()})
    if token:
        env[processes.TOKEN_ENV] = token  # extra cannot override the marker
    return env


def _pump(stream, path: Path, cap: int) -> None:
    """Copy a pipe to a file, keeping at most `cap` bytes and draining the rest."""
    written = 0
    with open(path, "wb") as f:
        for chunk in iter(lambda: stream.read(65536), b""):
            if written < cap:
                keep = chunk[: cap - written]
                f.write(keep)
                written += len(keep)
                if written >= cap:
                    f.write(b"\n[output truncated by the harness]\n")
        stream.close()


def tail(path: Path, chars: int = STDERR_TAIL_CHARS) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _write_spec(job: SlotJob, spec_path: Path, work: Path, clock_started_at: float) -> None:
    """The slot spec: the train split only (written in place: the sandbox binds this very file)."""
    from gpt.data import Dataset

    dataset = Dataset(Path(job.dataset).resolve())
    SlotSpec(budget_s=job.budget_s, device=job.device, seed=job.seed, vocab_size=dataset.tokenizer.vocab_size,
             train_path=str(dataset.train_path), out_dir=str(work), eval_seq_len=job.eval_seq_len,
             threads=job.threads, clock_started_at=clock_started_at).write(spec_path)


def _exposure(job: SlotJob, work: Path, spec_path: Path, level: str) -> sandboxing.Exposure:
    """What the genome may see of the file system: its work dir, the spec and the train split; the rest of
    the dataset folder is hidden, and so is every folder that holds documents of the corpus (gpt/corpus
    for the built-in one)."""
    from gpt.data import Dataset

    dataset = Dataset(Path(job.dataset).resolve())
    return sandboxing.Exposure(work=work, read_files=(spec_path, dataset.train_path),
                               hide_dirs=(dataset.path,) + seal(dataset, level).hidden,
                               gpu=job.device.startswith("cuda"))


class GenomeProcess:
    """One genome's sandboxed interpreter (`python -m gpt.starter`), spawned with the slot's sandbox,
    caps, environment and clock pipe, its imports done while it waits for `run()`. Used once.

    `stage` is the folder that holds its `work/` dir and `slot_spec.json`: the slot's out dir for a
    cold start, a staging folder of gpt.warm for a warm one. The slot's shape (sandbox level, dataset,
    device, threads, environment, caps) is fixed at spawn; budget, seed and the genome come with `run()`."""

    def __init__(self, job: SlotJob, level: str, stage: Path, bare: bool = False):
        self.level, self.stage = level, stage
        self.work, self.spec_path = stage / "work", stage / "slot_spec.json"
        shutil.rmtree(self.work, ignore_errors=True)  # a fresh work dir: nothing of an earlier genome in the out dir
        self.work.mkdir(parents=True)
        self.spec_path.write_text("{}")  # a placeholder: the sandbox binds the file, run() fills it in place
        self.limits = job.limits()
        exposure = _exposure(job, self.work, self.spec_path, level)
        processes.become_subreaper()  # orphans whose supervisor died are re-parented here, where the runner finds them
        cmd = sandboxing.wrap_command(level, [sys.executable, "-m", "gpt.starter"] + ["--bare"] * bare, exposure,
                                      self.limits)
        self.token = uuid.uuid4().hex
        self.spawned_at = time.monotonic()  # its imports take until the clock pipe's `ready`
        self.clock = ClockPipe()
        env = genome_env(self.spec_path, self.work, job.threads, job.env, self.token)
        env[CLOCK_FD_ENV] = str(self.clock.write_fd)
        self.proc = processes.spawn(cmd, cwd=self.work, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=env, start_new_session=True,
                                    pass_fds=(self.clock.write_fd,))
        self.clock.start()
        self.procs = processes.SlotProcesses(self.token, root_pid=self.proc.pid)
        self.run_by: int | None = None  # set when a job hands it over (a warm one waits with none)
        self.cancelled = False  # ended by stop_slots_run_by: the controller gave the job up
        with _LIVE_LOCK:
            _LIVE_SLOTS[self.proc.pid] = self

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, job: SlotJob, out: Path, near_end: tuple[float, Callable[[], None]] | None = None) -> Training:
        """Hand the genome over and say `go`: the clock starts now. Returns what the runner saw.
        `near_end` = (seconds after go, call): called then, from this thread, if the genome still runs."""
        try:
            return self._run(job, out, near_end)
        except BaseException:
            self.discard()  # nothing is left waiting (or running) when the hand-over itself failed
            raise

    def _run(self, job: SlotJob, out: Path, near_end) -> Training:
        self.run_by = threading.get_ident()  # the thread whose job this genome runs (a cancel ends it)
        shutil.copyfile(job.genome, self.work / "genome.py")
        asked = time.monotonic()
        self.clock.ready.wait(STARTER_WAIT_S)  # a cold start waits for its imports here, a warm one not at all
        waited = time.monotonic() - asked
        self.procs.scan()
        baseline = self.procs.cpu_seconds  # what the starter's imports cost, before the genome existed
        start = time.monotonic()
        _write_spec(job, self.spec_path, self.work, clock_started_at=time.time())
        grace = job.grace_s if job.grace_s is not None else default_grace(job.budget_s)
        watchdog = processes.Watchdog(self.procs, self.limits, self.work,
                                      on_breach=lambda: stop_slot(self.proc, self.procs))
        watchdog.start()
        pumps = [threading.Thread(target=_pump, args=(s, out / name, job.output_cap), daemon=True)
                 for s, name in ((self.proc.stdout, "stdout.txt"), (self.proc.stderr, "stderr.txt"))]
        for p in pumps:
            p.start()
        try:
            self.proc.stdin.write(b"go\n")
            self.proc.stdin.close()
        except OSError:  # the starter died while it waited: the slot reads as a crash below
            pass
        timed_out = False
        try:
            if near_end and _still_running(self.proc, start + near_end[0] - time.monotonic()):
                near_end[1]()
            self.proc.wait(timeout=max(0.0, start + job.budget_s + grace - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            exited = time.monotonic()
            watchdog.stop()
            self.discard()
        wall = time.monotonic() - start
        times = self.clock.join()
        for p in pumps:
            p.join(timeout=5)
        return _measured(job, out, self, watchdog, times, (start, exited, wall, baseline, waited), timed_out, grace)

    def discard(self) -> None:
        """End every process of this genome (nothing of it is left running)."""
        stop_slot(self.proc, self.procs)
        with _LIVE_LOCK:
            _LIVE_SLOTS.pop(self.proc.pid, None)
        processes.unregister_child(self.proc.pid)


def _still_running(proc: subprocess.Popen, seconds: float) -> bool:
    try:
        proc.wait(timeout=max(0.0, seconds))
    except subprocess.TimeoutExpired:
        return True
    return False


def _measured(job: SlotJob, out: Path, genome: GenomeProcess, watchdog, times: dict, spans: tuple, timed_out: bool,
              grace: float) -> Training:
    """The runner's account of a finished genome process: breaches, the clock verdict, usage (the CPU
    the starter spent on its imports before `go` is not the genome's)."""
    start, exited, wall, baseline, waited = spans
    breach = watchdog.breach
    if breach is None:
        msg = processes.disk_verdict(genome.work, genome.limits)
        if msg:
            breach = ("disk_limit", msg)
    allowance = job.export_allowance_s if job.export_allowance_s is not None else default_export_allowance(job.budget_s)
    # what the genome left running after its main process ended by itself (the supervisor reports it)
    leftovers = _leftovers(out / "stderr.txt") if not timed_out and watchdog.breach is None else None
    return Training(work=genome.work, sandbox=genome.level, returncode=genome.proc.returncode,
                    timed_out=timed_out and watchdog.breach is None, wall_seconds=wall, grace_s=grace, breach=breach,
                    clock=clock_verdict(times, start, exited, job.budget_s, allowance),
                    limits=genome.limits.describe(), leftover_processes=leftovers, peak_memory_mb=watchdog.peak_mb,
                    peak_procs=watchdog.peak_procs, cpu_seconds=max(0.0, watchdog.cpu_seconds - baseline),
                    train_cpu_seconds=_cpu_until(times.get("submit"), watchdog, (start, baseline), exited),
                    escaped_processes=genome.procs.escaped, pid=genome.proc.pid, starter_wait_s=waited)


def _cpu_until(moment: float | None, watchdog, go: tuple[float, float], exited: float) -> float | None:
    """The slot's CPU seconds from go to `moment` (submit), interpolated between the watchdog's samples: the
    share of the training window alone, which the idle seconds of the export allowance cannot dilute."""
    if moment is None:
        return None
    import numpy as np

    times, cpu = zip(go, *watchdog.cpu_samples, (exited, watchdog.cpu_seconds))
    return max(0.0, float(np.interp(moment, times, cpu)) - go[1])


def stop_slot(proc: subprocess.Popen, procs: processes.SlotProcesses) -> None:
    """End every process of the slot: ask the sandbox to clean up, then kill whatever carries the slot's marker."""
    if proc.poll() is None:
        try:  # the supervisor kills the genome and its leftovers; bwrap takes its namespace down with it
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            pass
    procs.kill_all()  # the backstop: every process still carrying EVO_SLOT_TOKEN or living in the slot's namespace
    processes.kill_group(proc.pid)
    proc.wait()
    procs.reap()  # the sandbox's helpers, re-parented to the runner when the root was reaped


def _leftovers(stderr_path: Path) -> int:
    """How many processes the supervisor killed after the genome's main process ended (0 if none)."""
    found = re.findall(r"\[evo-supervisor\] killed (\d+) process", tail(stderr_path, 500))
    return int(found[-1]) if found else 0
