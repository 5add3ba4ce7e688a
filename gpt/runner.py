"""The slot runner: train one genome in a subprocess under the harness clock, then score it.

One slot, step by step:
0. static checks (`gpt.static_checks`) read the genome's source: a `reject` finding fails
   the slot at once (reason `rejected`) without starting any process;
1. a fresh evaluation directory; the genome is copied to `work/genome.py`;
2. the scorer process starts at once, in its own sandbox (it imports torch while the genome trains);
3. `python genome.py` runs in a sandbox (`gpt.sandbox`: bwrap, netns or none; `auto` picks
   the strongest that works here) with a minimal environment (no API keys: the parent's
   environment is not inherited), a slot spec naming only the train split, rlimits on
   memory and file size, and a watchdog on total memory, process count and work-dir size;
   stdout and stderr go to size-capped files;
4. the runner's clock: the genome's lab says `connect` and `submit` on a pipe, and the runner
   timestamps the words as they arrive (`ClockPipe`); nothing the genome writes is a number;
5. at `budget + grace` seconds the whole slot is killed; when the genome exits, every
   process the slot left behind (daemons, setsid'd children, orphans of a killed supervisor,
   which reach the runner as their subreaper) is found and killed;
6. if an artifact was submitted, the scorer checks it (`gpt.artifact`: data, never code) and
   scores it with a probe seed the genome never saw; `result.json` records everything,
   including the sandbox level used (`sandbox`) and the static findings (`static_findings`).
"""
from __future__ import annotations

import json
import os
import re
import secrets
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
from gpt import artifact
from gpt import sandbox as sandboxing
from gpt.clock import ClockPipe, clock_verdict, default_export_allowance
from gpt.lab import CLOCK_FD_ENV, EXPORT_ERROR_NAME, SPEC_ENV, SlotSpec
from gpt.sealing import seal
from gpt.static_checks import check_source, format_findings

DEFAULT_OUTPUT_CAP = 4 * 1024 * 1024
# A CPU slot whose processes got less than this share of its threads' time (CPU seconds over wall seconds
# x threads, measured by the runner from /proc) was starved by something else on the machine: `contended`.
CONTENDED_CPU_SHARE = 0.4
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
    export_allowance_s: float | None = None  # None: default_export_allowance(budget_s)
    contended_share: float = CONTENDED_CPU_SHARE  # below this CPU share a CPU slot was starved; 0: never
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


class Scorer:
    """The trusted scorer process, sandboxed at the slot's level. It starts with the slot (importing
    torch takes seconds) and gets its request on stdin once the genome is gone; its answer comes
    back on a stdout pipe the runner owns. It sees the dataset and the genome's work dir read-only,
    writes only a private scratch dir, and has no network."""

    def __init__(self, job: SlotJob, out: Path, level: str, work: Path):
        scratch = out / "scorer"
        scratch.mkdir(exist_ok=True)
        env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8", "HOME": str(scratch),
               "TMPDIR": str(scratch), "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONPATH": str(Path(gpt.__file__).resolve().parent.parent)}
        if job.threads:
            env["OMP_NUM_THREADS"] = str(job.threads)
        env.update({k: str(v) for k, v in job.env.items() if k == "CUDA_VISIBLE_DEVICES"})
        exposure = sandboxing.Exposure(work=scratch, read_dirs=(Path(job.dataset).resolve(), work),
                                       gpu=job.device.startswith("cuda"))
        cmd = sandboxing.wrap_command(level, [sys.executable, "-m", "gpt.score"], exposure, job.limits(),
                                      supervise=False)
        self.proc = subprocess.Popen(cmd, cwd=scratch, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, text=True, start_new_session=True)
        sandboxing.register_child(self.proc.pid)
        self.procs = sandboxing.SlotProcesses(uuid.uuid4().hex, root_pid=self.proc.pid)
        self.used = False

    def score(self, request: dict) -> dict:
        """Send the request, wait for the answer; a crash, a hang or a breach is a failed slot, never ok."""
        self.used = True
        try:
            stdout, stderr = self.proc.communicate(json.dumps(request), timeout=SCORE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.close()
            return {"status": "failed", "reason": "score_timeout", "detail": f"scoring took over {SCORE_TIMEOUT_S:g} s"}
        return _scorer_result(self.proc.returncode, stdout, stderr)

    def close(self) -> None:
        if not self.used and self.proc.poll() is None:
            try:  # an unused scorer is told there is nothing to score (EOF), then ended
                self.proc.stdin.close()
            except OSError:
                pass
        self.procs.kill_all()  # the sandbox's own helpers too, reaped once they are re-parented here
        _kill_group(self.proc.pid)
        self.proc.wait()
        sandboxing.unregister_child(self.proc.pid)
        self.procs.reap()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


def _prepare_work(job: SlotJob, out: Path) -> Path:
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(job.genome, work / "genome.py")
    return work


def train(job: SlotJob, out: Path, level: str | None = None) -> dict:
    """Run the genome's training process in its sandbox under the hard wall clock; return what the runner saw."""
    level = level or sandboxing.resolve_level(job.sandbox)
    sandboxing.become_subreaper()  # orphans whose supervisor died are re-parented here, where the runner finds them
    work = _prepare_work(job, out)
    spec_path = out / "slot_spec.json"
    from gpt.data import Dataset

    dataset = Dataset(Path(job.dataset).resolve())
    SlotSpec(budget_s=job.budget_s, device=job.device, seed=job.seed, vocab_size=dataset.tokenizer.vocab_size,
             train_path=str(dataset.train_path), out_dir=str(work), eval_seq_len=job.eval_seq_len,
             threads=job.threads, spawned_at=time.time()).write(spec_path)
    grace = job.grace_s if job.grace_s is not None else default_grace(job.budget_s)
    limits = job.limits()
    token = uuid.uuid4().hex
    # the genome sees its work dir, the spec and the train split; the rest of the dataset folder is hidden,
    # and so is every folder that holds documents of the corpus (gpt/corpus for the built-in one)
    exposure = sandboxing.Exposure(work=work, read_files=(spec_path, dataset.train_path),
                                   hide_dirs=(dataset.path,) + seal(dataset, level).hidden,
                                   gpu=job.device.startswith("cuda"))
    cmd = sandboxing.wrap_command(level, [sys.executable, "genome.py"], exposure, limits)
    clock = ClockPipe()
    env = genome_env(spec_path, work, job.threads, job.env, token)
    env[CLOCK_FD_ENV] = str(clock.write_fd)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, start_new_session=True, pass_fds=(clock.write_fd,))
    sandboxing.register_child(proc.pid)
    clock.start()
    procs = sandboxing.SlotProcesses(token, root_pid=proc.pid)
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
        exited = time.monotonic()
        watchdog.stop()
        _stop_slot(proc, procs)
        with _LIVE_LOCK:
            _LIVE_SLOTS.pop(proc.pid, None)
        sandboxing.unregister_child(proc.pid)
    slot_processes_seconds = time.monotonic() - start
    times = clock.join()
    for p in pumps:
        p.join(timeout=5)
    breach = watchdog.breach
    if breach is None:
        msg = sandboxing.disk_verdict(work, limits)
        if msg:
            breach = ("disk_limit", msg)
    allowance = job.export_allowance_s if job.export_allowance_s is not None else default_export_allowance(job.budget_s)
    # what the genome left running after its main process ended by itself (the supervisor reports it)
    leftovers = _leftovers(out / "stderr.txt") if not timed_out and watchdog.breach is None else None
    return {"timed_out": timed_out and watchdog.breach is None, "returncode": proc.returncode,
            "wall_seconds": slot_processes_seconds, "grace_s": grace, "work": work, "sandbox": level,
            "breach": breach, "clock": clock_verdict(times, start, exited, job.budget_s, allowance,
                                                     watchdog.cpu_before(times["connect"]) if "connect" in times else None),
            "limits": limits.describe(), "leftover_processes": leftovers, "peak_memory_mb": watchdog.peak_mb,
            "peak_procs": watchdog.peak_procs, "cpu_seconds": watchdog.cpu_seconds,
            "escaped_processes": procs.escaped}


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
    procs.reap()  # the sandbox's helpers, re-parented to the runner when the root was reaped


def _scorer_result(returncode: int, stdout: str, stderr: str) -> dict:
    """The scorer's JSON answer, or a failure naming what went wrong (score_memory, score_error)."""
    if returncode == 0:
        try:
            answer = json.loads(stdout)
            if isinstance(answer, dict) and answer.get("status") in ("ok", "failed", "flagged"):
                return answer
        except ValueError:
            pass
        return {"status": "failed", "reason": "score_error", "detail": f"unreadable scorer output: {stdout[:500]!r}"}
    tail = stderr[-STDERR_TAIL_CHARS:]
    if _MEMORY_ERRORS.search(tail) or returncode in (-signal.SIGKILL, 128 + signal.SIGKILL):
        return {"status": "failed", "reason": "score_memory",
                "detail": f"the scorer ran out of memory (exit code {returncode}): {tail[-500:]}"}
    return {"status": "failed", "reason": "score_error", "detail": f"the scorer exited with {returncode}: {tail}"}


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


HARNESS_READ = artifact.FILES + (EXPORT_ERROR_NAME,)  # files of the work dir the harness reads


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


def _rejected(job: SlotJob, out: Path, level: str, findings: list, slot_start: float) -> dict:
    """A slot the static checks refused: no process was started, no slot time spent."""
    rejects = [f for f in findings if f.severity == "reject"]
    result = {"status": "failed", "reason": "rejected",
              "detail": "static checks rejected the genome:\n" + format_findings(rejects),
              "budget_s": job.budget_s, "seed": job.seed, "device": job.device, "returncode": None,
              "train_seconds": 0.0, "slot_seconds": time.monotonic() - slot_start, "export_seconds": None,
              "startup_seconds": None, "stderr_tail": "", "steps": None,
              **_integrity_fields(level, findings), "limits": job.limits().describe(),
              "leftover_processes": None, "peak_memory_mb": None}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


def _training_outcome(job: SlotJob, out: Path, ran: dict) -> dict | None:
    """Why the slot failed before scoring (status, reason, detail), or None if there is an artifact to score."""
    work = ran["work"]
    planted = _planted_links(work)
    if planted:
        return {"status": "flagged", "reason": "artifact_link",
                "detail": f"{', '.join(planted)} in the work dir is a link or not a regular file: the harness "
                          "reads only files the genome wrote itself"}
    if ran["breach"]:
        return {"status": "failed", "reason": ran["breach"][0], "detail": ran["breach"][1]}
    if ran["timed_out"]:
        return {"status": "failed", "reason": "timeout",
                "detail": f"killed at budget {job.budget_s:g} s + grace {ran['grace_s']:g} s"}
    if (work / EXPORT_ERROR_NAME).exists():
        return {"status": "failed", "reason": "export_error", "detail": (work / EXPORT_ERROR_NAME).read_text()[:4000]}
    if ran["returncode"] != 0:
        reason, detail = _crash_reason(ran["returncode"], _tail(out / "stderr.txt"))
        return {"status": "failed", "reason": reason, "detail": detail}
    if not any((work / name).exists() for name in artifact.FILES):
        return {"status": "failed", "reason": "no_submit", "detail": "the genome exited without calling run.submit(model)"}
    return None


def run_slot(job: SlotJob) -> dict:
    """Check, train and score one genome; write and return `result.json`'s content."""
    slot_start = time.monotonic()
    out = Path(job.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    level = sandboxing.resolve_level(job.sandbox)  # UserError when a named level is not available here
    findings = check_source(Path(job.genome).read_text(errors="replace")) if job.static_checks else []
    if any(f.severity == "reject" for f in findings):  # no slot is spent: no scorer, no genome process
        return _rejected(job, out, level, findings, slot_start)
    sandboxing.reap_orphans()
    scorer = Scorer(job, out, level, _prepare_work(job, out))
    try:
        ran = train(job, out, level)
        result = _training_outcome(job, out, ran)
        if result is None:
            request = {"artifact": str(ran["work"]), "dataset": job.dataset, "seq_len": job.eval_seq_len,
                       "eval_tokens": job.eval_tokens, "device": job.device, "test": job.test,
                       "threads": job.threads, "probe_seed": secrets.randbits(63)}  # the genome never sees it
            eval_start = time.monotonic()
            result = scorer.score(request)
            result["eval_seconds"] = time.monotonic() - eval_start
    finally:
        scorer.close()
        sandboxing.reap_orphans()
    clock = ran["clock"]
    if result.get("status") == "ok" or (result.get("status") == "flagged" and result.get("reason") != "artifact_link"):
        _budget_probe(result, clock)
    result.update(
        budget_s=job.budget_s, seed=job.seed, device=job.device, returncode=ran["returncode"],
        train_seconds=clock["train_s"] if clock["train_s"] is not None else ran["wall_seconds"],
        slot_seconds=time.monotonic() - slot_start, export_seconds=clock["export_s"],
        startup_seconds=clock["startup_s"], cpu_seconds=ran["cpu_seconds"], **_contention(job, ran),
        stderr_tail=_tail(out / "stderr.txt") if result["status"] == "failed" else "",
        steps=_parse_steps(out / "stdout.txt"),
        **_integrity_fields(level, findings), limits=ran["limits"], leftover_processes=ran["leftover_processes"],
        escaped_processes=ran["escaped_processes"], peak_memory_mb=ran["peak_memory_mb"],
    )
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


def _contention(job: SlotJob, ran: dict) -> dict:
    """The slot's CPU share (None for GPU slots, where CPU time says little) and whether it was starved."""
    if not job.threads or not ran["wall_seconds"] or not ran["cpu_seconds"] or ran["timed_out"]:
        return {"cpu_share": None, "contended": False}
    share = ran["cpu_seconds"] / (ran["wall_seconds"] * job.threads)
    return {"cpu_share": share, "contended": share < job.contended_share}


def _budget_probe(result: dict, clock: dict) -> None:
    """Flag a genome the runner's clock saw train past its budget, export too slowly, or hand in an
    artifact without run.submit(). Nothing the genome wrote is read here."""
    result.setdefault("probes", {})["budget"] = clock
    result["budget"] = "pass" if clock["pass"] else "fail"
    if not clock["pass"]:
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


SCORING_SUFFIX = ".scoring.json"  # written by `evo export` next to a script: the run's data and scoring settings


def run_by_hand(genome: Path, budget_s: float, data: str | None, device: str) -> int:
    """`python genome.py` outside the harness: one full slot, the scores printed as `key: value` lines.
    Next to an exported script, its `.scoring.json` gives the run's dataset and scoring settings, so the
    number printed is the run's; otherwise the data is `data` (EVO_DATA) or the built-in corpus, said loudly."""
    import tempfile

    from gpt.data import DEFAULT_SOURCE, Dataset, prepare

    settings = {"eval_tokens": SlotJob.eval_tokens, "eval_seq_len": SlotJob.eval_seq_len}
    scoring = genome.with_suffix(SCORING_SUFFIX)
    if scoring.is_file() and not data:
        saved = json.loads(scoring.read_text())
        dataset = Dataset(Path(saved["dataset"])) if Path(saved["dataset"], "manifest.json").is_file() \
            else prepare(saved["data"], tokenizer=saved.get("tokenizer", "byte"))
        settings.update(eval_tokens=saved["eval_tokens"], eval_seq_len=saved["eval_seq_len"])
        budget_s = float(os.environ.get("EVO_BUDGET", saved["budget_s"]))
        where = f"the run's corpus {saved['data']!r} and scoring settings (from {scoring.name})"
    else:
        source = data or DEFAULT_SOURCE
        dataset = prepare(source)
        where = f"{source!r} (set EVO_DATA to change it)"
    print(f"evo: scoring {genome.name} on {where}: {settings['eval_tokens']} tokens per split at context "
          f"{settings['eval_seq_len']}, budget {budget_s:g} s on {device}", file=sys.stderr, flush=True)
    out = Path(tempfile.mkdtemp(prefix="evo-by-hand-"))
    result = run_slot(SlotJob(genome=str(genome), dataset=str(dataset.path), out_dir=str(out), budget_s=budget_s,
                              device=device, seed=secrets.randbits(31), threads=os.cpu_count() or 1, **settings))
    sys.stdout.write(_read_text(out / "stdout.txt"))
    print("---")
    for key in ("status", "reason", "val_bpb", "heldout_bpb", "scored_tokens", "causality", "canary", "stateless",
                "budget", "train_seconds"):
        value = result.get(key)
        print(f"{key + ':':<15}{value:.6f}" if isinstance(value, float) else f"{key + ':':<15}{value}")
    if result["status"] != "ok":
        print(result.get("detail") or "", file=sys.stderr)
    print(f"details: {out / 'result.json'}")
    return 0 if result["status"] == "ok" else 1


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
