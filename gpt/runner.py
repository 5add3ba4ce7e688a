"""The slot runner: train one genome in a subprocess under the harness clock, then score it.

One slot, step by step:
0. static checks (`gpt.static_checks`) read the genome's source: a `reject` finding fails
   the slot at once (reason `rejected`) without starting any process;
1. a fresh evaluation directory; the genome is copied to `work/genome.py`;
2. the scorer process starts at once (it imports torch while the genome trains);
3. `python genome.py` runs in a sandbox (`gpt.sandbox`: bwrap, netns or none; `auto` picks
   the strongest that works here) with a minimal environment (no API keys: the parent's
   environment is not inherited), a slot spec naming only the train split, rlimits on
   memory and file size, and a watchdog on total memory, process count and work-dir size;
   stdout and stderr go to size-capped files;
4. at `budget + grace` seconds the whole slot is killed; when the genome exits, every
   process the slot left behind (daemons, setsid'd children) is found and killed;
5. if an artifact was submitted, the scorer scores it; `result.json` records everything,
   including the sandbox level used (`sandbox`) and the static findings (`static_findings`).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import gpt
from gpt import sandbox as sandboxing
from gpt.lab import ARTIFACT_NAME, EXPORT_ERROR_NAME, SPEC_ENV, TIMINGS_NAME, SlotSpec
from gpt.static_checks import check_source, format_findings

DEFAULT_OUTPUT_CAP = 4 * 1024 * 1024
STDERR_TAIL_CHARS = 3000
SCORE_TIMEOUT_S = 600.0
STOP_WAIT_S = 3.0  # how long the sandbox gets to clean up after SIGTERM before everything is killed


def default_grace(budget_s: float) -> float:
    """Time past the budget before the hard kill. The kill clock starts at spawn, the budget at
    connect: grace covers interpreter start and torch import (seconds on a busy CPU) and export."""
    return max(20.0, 0.2 * budget_s)


_LIVE_SLOTS: dict = {}  # pid -> (Popen, SlotProcesses) of every genome process running now
_LIVE_LOCK = threading.Lock()


def kill_all_slots() -> None:
    """End every running slot of this process (Ctrl-C in the controller): nothing is left running."""
    with _LIVE_LOCK:
        live = list(_LIVE_SLOTS.values())
    for proc, procs in live:
        _stop_slot(proc, procs)


@dataclass(frozen=True)
class SlotJob:
    """Everything needed to run and score one genome in one slot."""

    genome: str
    dataset: str
    out_dir: str
    budget_s: float
    seed: int = 0
    device: str = "cpu"
    grace_s: float | None = None
    eval_tokens: int = 32768
    eval_seq_len: int = 256
    threads: int = 0
    test: bool = False
    output_cap: int = DEFAULT_OUTPUT_CAP
    env: dict = field(default_factory=dict)  # extra variables, e.g. CUDA_VISIBLE_DEVICES
    sandbox: str = "auto"  # auto | bwrap | netns | none (see gpt.sandbox)
    memory_mb: int | None = None  # per-slot memory cap; None: sandboxing.default_memory_mb(); 0: no cap
    disk_mb: int = sandboxing.DEFAULT_DISK_MB  # cap on each file and on the work dir's total size; 0: no cap
    max_procs: int = sandboxing.DEFAULT_MAX_PROCS  # cap on the slot's live processes (polled); 0: no cap
    static_checks: bool = True  # False only for tests and red-team runs that must reach the sandbox

    def limits(self) -> sandboxing.Limits:
        memory = sandboxing.default_memory_mb() if self.memory_mb is None else self.memory_mb
        return sandboxing.Limits(memory_mb=memory, disk_mb=self.disk_mb, max_procs=self.max_procs)


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
        env[sandboxing.TOKEN_ENV] = token
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    env.update({k: str(v) for k, v in extra.items()})
    if token:
        env[sandboxing.TOKEN_ENV] = token  # extra cannot override the marker
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


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: Path, chars: int = STDERR_TAIL_CHARS) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _start_scorer(threads: int) -> subprocess.Popen:
    env = {"PATH": os.environ.get("PATH", os.defpath), "PYTHONPATH": str(Path(gpt.__file__).resolve().parent.parent),
           "LANG": "C.UTF-8"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.Popen([sys.executable, "-m", "gpt.score"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True, start_new_session=True)


def train(job: SlotJob, out: Path, level: str | None = None) -> dict:
    """Run the genome's training process in its sandbox under the hard wall clock; return what the runner saw."""
    level = level or sandboxing.resolve_level(job.sandbox)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(job.genome, work / "genome.py")
    spec_path = out / "slot_spec.json"
    from gpt.data import Dataset

    dataset = Dataset(Path(job.dataset).resolve())
    SlotSpec(budget_s=job.budget_s, device=job.device, seed=job.seed, vocab_size=dataset.tokenizer.vocab_size,
             train_path=str(dataset.train_path), out_dir=str(work), eval_seq_len=job.eval_seq_len,
             threads=job.threads, spawned_at=time.time()).write(spec_path)
    grace = job.grace_s if job.grace_s is not None else default_grace(job.budget_s)
    limits = job.limits()
    token = uuid.uuid4().hex
    # the genome sees its work dir, the spec and the train split; the rest of the dataset folder is hidden
    exposure = sandboxing.Exposure(work=work, read_files=(spec_path, dataset.train_path), hide_dirs=(dataset.path,),
                                gpu=job.device.startswith("cuda"))
    cmd = sandboxing.wrap_command(level, [sys.executable, "genome.py"], exposure, limits)
    procs = sandboxing.SlotProcesses(token)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=genome_env(spec_path, work, job.threads, job.env, token), start_new_session=True)
    with _LIVE_LOCK:
        _LIVE_SLOTS[proc.pid] = (proc, procs)
    watchdog = sandboxing.Watchdog(procs, limits, work, on_breach=lambda: _stop_slot(proc, procs))
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
        watchdog.stop()
        _stop_slot(proc, procs)
        with _LIVE_LOCK:
            _LIVE_SLOTS.pop(proc.pid, None)
    train_seconds = time.monotonic() - start
    for p in pumps:
        p.join(timeout=5)
    breach = watchdog.breach
    if breach is None:
        msg = sandboxing.disk_verdict(work, limits)
        if msg:
            breach = ("disk_limit", msg)
    # what the genome left running after its main process ended by itself (the supervisor reports it)
    leftovers = _leftovers(out / "stderr.txt") if not timed_out and watchdog.breach is None else None
    return {"timed_out": timed_out and watchdog.breach is None, "returncode": proc.returncode,
            "train_seconds": train_seconds, "grace_s": grace, "work": work, "sandbox": level, "breach": breach,
            "limits": limits.describe(), "leftover_processes": leftovers, "peak_memory_mb": watchdog.peak_mb,
            "peak_procs": watchdog.peak_procs}


def _stop_slot(proc: subprocess.Popen, procs: sandboxing.SlotProcesses) -> None:
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
    _kill_group(proc.pid)
    proc.wait()


def _scorer_result(returncode: int, stdout: str, stderr: str) -> dict:
    """The scorer's JSON answer, or a score_error naming what went wrong."""
    if returncode == 0:
        try:
            return json.loads(stdout)
        except ValueError:
            return {"status": "failed", "reason": "score_error", "detail": f"unreadable scorer output: {stdout[:500]!r}"}
    return {"status": "failed", "reason": "score_error", "detail": stderr[-STDERR_TAIL_CHARS:]}


def _leftovers(stderr_path: Path) -> int:
    """How many processes the supervisor killed after the genome's main process ended (0 if none)."""
    found = re.findall(r"\[evo-supervisor\] killed (\d+) process", _tail(stderr_path, 500))
    return int(found[-1]) if found else 0


_MEMORY_ERRORS = re.compile(r"MemoryError|Cannot allocate memory|can't allocate memory|std::bad_alloc|"
                            r"out of memory|OutOfMemoryError")


def _crash_reason(returncode: int, stderr_tail: str) -> tuple[str, str]:
    """crash, refined to memory or disk_limit when the genome died of a limit."""
    if _MEMORY_ERRORS.search(stderr_tail):
        return "memory", f"exit code {returncode}: out of memory (the slot's memory cap or the device's)"
    if "File too large" in stderr_tail:
        return "disk_limit", f"exit code {returncode}: a file grew past the per-file cap (disk_mb)"
    if returncode in (-signal.SIGKILL, 128 + signal.SIGKILL):
        return "memory", f"exit code {returncode}: killed by SIGKILL, not by the harness (most likely out of memory)"
    return "crash", f"exit code {returncode}"


HARNESS_READ = (ARTIFACT_NAME, EXPORT_ERROR_NAME, TIMINGS_NAME)  # files of the work dir the harness reads


def _planted_links(work: Path) -> list[str]:
    """Files the harness reads from the work dir that are not plain files the genome wrote: a symlink
    (to another genome's artifact, to the manifest, ...), a hard link, a FIFO. Checked after every
    process of the slot is dead, so nothing can swap them afterwards."""
    bad = []
    for name in HARNESS_READ:
        try:
            st = os.lstat(work / name)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            bad.append(name)
    return bad


def _integrity_fields(level: str, findings: list) -> dict:
    """Journal-facing fields: the sandbox level the genome ran under and every static finding."""
    return {"sandbox": level, "static_findings": [f.to_dict() for f in findings]}


def run_slot(job: SlotJob) -> dict:
    """Check, train and score one genome; write and return `result.json`'s content."""
    slot_start = time.monotonic()
    out = Path(job.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    level = sandboxing.resolve_level(job.sandbox)  # UserError when a named level is not available here
    findings = check_source(Path(job.genome).read_text(errors="replace")) if job.static_checks else []
    rejects = [f for f in findings if f.severity == "reject"]
    if rejects:  # no slot is spent: no scorer, no genome process
        result = {"status": "failed", "reason": "rejected",
                  "detail": "static checks rejected the genome:\n" + format_findings(rejects),
                  "budget_s": job.budget_s, "seed": job.seed, "device": job.device, "returncode": None,
                  "train_seconds": 0.0, "slot_seconds": time.monotonic() - slot_start, "export_seconds": None,
                  "startup_seconds": None, "stderr_tail": "", "steps": None,
                  **_integrity_fields(level, findings), "limits": job.limits().describe(),
                  "leftover_processes": None, "peak_memory_mb": None}
        (out / "result.json").write_text(json.dumps(result, indent=1))
        return result
    scorer = _start_scorer(job.threads)
    scored = False
    try:
        ran = train(job, out, level)
        work = ran["work"]
        result = {"status": "failed", "reason": None, "detail": None}
        artifact = work / ARTIFACT_NAME
        planted = _planted_links(work)
        if planted:
            result.update(status="flagged", reason="artifact_link",
                          detail=f"{', '.join(planted)} in the work dir is a link or not a regular file: the harness "
                                 "reads only files the genome wrote itself")
        elif ran["breach"]:
            reason, detail = ran["breach"]
            result.update(reason=reason, detail=detail)
        elif ran["timed_out"]:
            result.update(reason="timeout", detail=f"killed at budget {job.budget_s:g} s + grace {ran['grace_s']:g} s")
        elif (work / EXPORT_ERROR_NAME).exists():
            result.update(reason="export_error", detail=(work / EXPORT_ERROR_NAME).read_text()[:4000])
        elif ran["returncode"] != 0:
            reason, detail = _crash_reason(ran["returncode"], _tail(out / "stderr.txt"))
            result.update(reason=reason, detail=detail)
        elif not artifact.exists():
            result.update(reason="no_submit", detail="the genome exited without calling run.submit(model)")
        else:
            request = {"artifact": str(artifact), "dataset": job.dataset, "seq_len": job.eval_seq_len,
                       "eval_tokens": job.eval_tokens, "device": job.device, "seed": job.seed,
                       "test": job.test, "threads": job.threads}
            eval_start = time.monotonic()
            scored = True
            try:
                stdout, stderr = scorer.communicate(json.dumps(request), timeout=SCORE_TIMEOUT_S)
                result = _scorer_result(scorer.returncode, stdout, stderr)
            except subprocess.TimeoutExpired:
                result = {"status": "failed", "reason": "score_timeout", "detail": f"scoring took over {SCORE_TIMEOUT_S} s"}
            result["eval_seconds"] = time.monotonic() - eval_start
    finally:
        if scored and scorer.poll() is None:
            try:
                scorer.communicate("", timeout=30)
            except subprocess.TimeoutExpired:
                pass
        _kill_group(scorer.pid)  # an unused scorer is not waited for: it holds no state
        scorer.wait()
    lab_timings = {}
    if result.get("reason") != "artifact_link" and (work / TIMINGS_NAME).exists():
        try:
            lab_timings = json.loads((work / TIMINGS_NAME).read_text()[:10000])
            lab_timings = {k: float(lab_timings[k]) for k in ("train_s", "export_s", "overrun_s")}
        except (ValueError, TypeError, KeyError, AttributeError):
            lab_timings = {}
    if result.get("status") == "ok" or (result.get("status") == "flagged" and result.get("reason") != "artifact_link"):
        # an artifact without submit()'s timings was written around the harness clock: flag it
        _budget_probe(result, lab_timings.get("overrun_s"), job.budget_s)
    result.update(
        budget_s=job.budget_s, seed=job.seed, device=job.device, returncode=ran["returncode"],
        train_seconds=ran["train_seconds"], slot_seconds=time.monotonic() - slot_start,
        export_seconds=lab_timings.get("export_s"),
        startup_seconds=(ran["train_seconds"] - lab_timings["train_s"] - lab_timings["export_s"]) if lab_timings else None,
        stderr_tail=_tail(out / "stderr.txt") if result["status"] == "failed" else "",
        steps=_parse_steps(out / "stdout.txt"),
        **_integrity_fields(level, findings), limits=ran["limits"], leftover_processes=ran["leftover_processes"],
        peak_memory_mb=ran["peak_memory_mb"],
    )
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


def budget_tolerance(budget_s: float) -> float:
    """How far past the clock a genome may submit: one slow step or a final print, not more."""
    return max(2.0, 0.05 * budget_s)


def _budget_probe(result: dict, overrun_s: float | None, budget_s: float) -> None:
    """Flag a genome that kept training after time_left() reached zero (inside the kill grace), or
    whose artifact did not come through run.submit() (no timings: the clock cannot vouch for it)."""
    passed = overrun_s is not None and overrun_s <= budget_tolerance(budget_s)
    result.setdefault("probes", {})["budget"] = {"pass": passed, "overrun_s": overrun_s,
                                                 "tolerance_s": budget_tolerance(budget_s)}
    result["budget"] = "pass" if passed else "fail"
    if not passed:
        reasons = [r for r in (result.get("reason") or "").split(",") if r] + ["budget"]
        result.update(status="flagged", reason=",".join(reasons))


def _parse_steps(path: Path):
    """The `steps:` line a genome prints in its summary, if any (informational only)."""
    try:
        for line in reversed(path.read_text(errors="replace").splitlines()[-50:]):
            if line.startswith("steps:"):
                return int(line.split(":", 1)[1].strip())
    except (OSError, ValueError):
        pass
    return None
