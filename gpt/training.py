"""The genome's training process: spawned in its sandbox, clocked by the runner, killed at the hard limit.

`train()` is step 3-5 of a slot (see gpt.runner): it writes the slot spec, starts
`python genome.py` under the sandbox level with a scrubbed environment and the runner's clock
pipe, watches it (gpt.processes), kills it at `budget + grace`, and ends every process the slot
left behind. It returns what the runner measured (`Training`); nothing the genome wrote is read
here except its stdout and stderr, into size-capped files.
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
    from gpt.job import SlotJob

STDERR_TAIL_CHARS = 3000
STOP_WAIT_S = 3.0  # how long the sandbox gets to clean up after SIGTERM before everything is killed
MEMORY_ERRORS = re.compile(r"MemoryError|Cannot allocate memory|can't allocate memory|std::bad_alloc|"
                           r"out of memory|OutOfMemoryError")


def default_grace(budget_s: float) -> float:
    """Time past the budget before the hard kill. The kill clock starts at spawn, the budget at
    connect: grace covers interpreter start and torch import (seconds on a busy CPU) and export."""
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
    escaped_processes: int


_LIVE_SLOTS: dict = {}  # pid -> (Popen, SlotProcesses) of every genome process running now
_LIVE_LOCK = threading.Lock()


def kill_all_slots() -> None:
    """End every running slot of this process (Ctrl-C in the controller): nothing is left running."""
    with _LIVE_LOCK:
        live = list(_LIVE_SLOTS.values())
    for proc, procs in live:
        stop_slot(proc, procs)


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


def prepare_work(job: SlotJob, out: Path) -> Path:
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(job.genome, work / "genome.py")
    return work


def _write_spec(job: SlotJob, out: Path, work: Path, level: str):
    """The slot spec (train split only) and what the genome may see of the file system."""
    from gpt.data import Dataset

    spec_path = out / "slot_spec.json"
    dataset = Dataset(Path(job.dataset).resolve())
    SlotSpec(budget_s=job.budget_s, device=job.device, seed=job.seed, vocab_size=dataset.tokenizer.vocab_size,
             train_path=str(dataset.train_path), out_dir=str(work), eval_seq_len=job.eval_seq_len,
             threads=job.threads, spawned_at=time.time()).write(spec_path)
    # the genome sees its work dir, the spec and the train split; the rest of the dataset folder is hidden,
    # and so is every folder that holds documents of the corpus (gpt/corpus for the built-in one)
    exposure = sandboxing.Exposure(work=work, read_files=(spec_path, dataset.train_path),
                                   hide_dirs=(dataset.path,) + seal(dataset, level).hidden,
                                   gpu=job.device.startswith("cuda"))
    return spec_path, exposure


def train(job: SlotJob, out: Path, level: str | None = None) -> Training:
    """Run the genome's training process in its sandbox under the hard wall clock; return what the runner saw."""
    level = level or sandboxing.resolve_level(job.sandbox)
    processes.become_subreaper()  # orphans whose supervisor died are re-parented here, where the runner finds them
    work = prepare_work(job, out)
    spec_path, exposure = _write_spec(job, out, work, level)
    grace = job.grace_s if job.grace_s is not None else default_grace(job.budget_s)
    limits = job.limits()
    token = uuid.uuid4().hex
    cmd = sandboxing.wrap_command(level, [sys.executable, "genome.py"], exposure, limits)
    clock = ClockPipe()
    env = genome_env(spec_path, work, job.threads, job.env, token)
    env[CLOCK_FD_ENV] = str(clock.write_fd)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, start_new_session=True, pass_fds=(clock.write_fd,))
    processes.register_child(proc.pid)
    clock.start()
    procs = processes.SlotProcesses(token, root_pid=proc.pid)
    with _LIVE_LOCK:
        _LIVE_SLOTS[proc.pid] = (proc, procs)
    watchdog = processes.Watchdog(procs, limits, work, on_breach=lambda: stop_slot(proc, procs))
    watchdog.start()
    pumps = [threading.Thread(target=_pump, args=(s, out / name, job.output_cap), daemon=True)
             for s, name in ((proc.stdout, "stdout.txt"), (proc.stderr, "stderr.txt"))]
    for p in pumps:
        p.start()
    timed_out = False
    try:
        proc.wait(timeout=job.budget_s + grace)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        exited = time.monotonic()
        watchdog.stop()
        stop_slot(proc, procs)
        with _LIVE_LOCK:
            _LIVE_SLOTS.pop(proc.pid, None)
        processes.unregister_child(proc.pid)
    wall = time.monotonic() - start
    times = clock.join()
    for p in pumps:
        p.join(timeout=5)
    return _measured(job, out, level, limits, proc, procs, watchdog, times, (start, exited, wall), timed_out, grace)


def _measured(job: SlotJob, out: Path, level: str, limits: sandboxing.Limits, proc, procs, watchdog, times: dict,
              spans: tuple, timed_out: bool, grace: float) -> Training:
    """The runner's account of a finished genome process: breaches, the clock verdict, usage."""
    start, exited, wall = spans
    work = out / "work"
    breach = watchdog.breach
    if breach is None:
        msg = processes.disk_verdict(work, limits)
        if msg:
            breach = ("disk_limit", msg)
    allowance = job.export_allowance_s if job.export_allowance_s is not None else default_export_allowance(job.budget_s)
    cpu_before = watchdog.cpu_before(times["connect"]) if "connect" in times else None
    # what the genome left running after its main process ended by itself (the supervisor reports it)
    leftovers = _leftovers(out / "stderr.txt") if not timed_out and watchdog.breach is None else None
    return Training(work=work, sandbox=level, returncode=proc.returncode,
                    timed_out=timed_out and watchdog.breach is None, wall_seconds=wall, grace_s=grace, breach=breach,
                    clock=clock_verdict(times, start, exited, job.budget_s, allowance, cpu_before),
                    limits=limits.describe(), leftover_processes=leftovers, peak_memory_mb=watchdog.peak_mb,
                    peak_procs=watchdog.peak_procs, cpu_seconds=watchdog.cpu_seconds,
                    escaped_processes=procs.escaped)


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
