"""The runner's side of the trusted scorer: a sandboxed `python -m gpt.score` process, kept between jobs.

gpt/score.py is the code that runs inside that process; this module starts it at the slot's sandbox
level, hands it one request per scored genome (a JSON line on stdin, the answer a JSON line on stdout),
and turns its answer (or its crash, hang or memory death) into a `SlotResult`. An answer names the artifact
it scored, so a line out of step with the requests ends the scorer; of the answer the runner keeps only the
fields the scorer owns (`gpt.result.SCORER_FIELDS`).

Importing torch and torch.export's loader costs a scorer about 2 CPU seconds, which a fresh scorer per
slot spent while its genome trained. A scorer is trusted code and an artifact is data (gpt.artifact: a
checked graph of ATen ops and safetensors weights), so one scorer process serves every job of its shape
in this process (`take`, `give_back`): each request loads its artifact afresh, with the RNG reseeded and
uninitialized memory filled (gpt.score), and a scorer that crashed, hung or answered nonsense is ended,
never reused. It sees the dataset read-only and its own scratch dir, where the runner moves each
artifact (after the genome is dead) for the one request that reads it, and back.
"""
from __future__ import annotations

import atexit
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import gpt
from gpt import artifact, processes
from gpt import sandbox as sandboxing
from gpt.result import SCORER_FIELDS, STATUSES, SlotResult
from gpt.training import MEMORY_ERRORS, STDERR_TAIL_CHARS

if TYPE_CHECKING:
    from gpt.job import SlotJob

SCORE_TIMEOUT_S = 600.0
IDLE_S = 600.0  # an idle scorer is ended after this long, taken or not (it holds a few hundred MiB, and a GPU context)
MAX_IDLE = 2  # idle scorers kept per process (one per slot shape in use; the oldest goes first)


class Scorer:
    """The trusted scorer process, sandboxed at the slot's level, started with its first job (it imports
    torch while that genome trains) and reused by later jobs of its shape. Its answers come back on a
    stdout pipe the runner owns; it has no network."""

    def __init__(self, job: SlotJob, level: str, near: Path):
        self.key = shape(job, level)
        self.scratch = near / f".scorer-{uuid.uuid4().hex[:12]}"  # beside the job's out dir: artifacts link there
        self.scratch.mkdir(parents=True)
        env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8", "HOME": str(self.scratch),
               "TMPDIR": str(self.scratch), "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONPATH": str(Path(gpt.__file__).resolve().parent.parent)}
        if job.threads:
            env["OMP_NUM_THREADS"] = str(job.threads)
        env.update({k: str(v) for k, v in job.env.items() if k == "CUDA_VISIBLE_DEVICES"})
        gpu = job.device.startswith("cuda")
        exposure = sandboxing.Exposure(work=self.scratch, read_dirs=(Path(job.dataset).resolve(),), gpu=gpu)
        argv = [sys.executable, "-m", "gpt.score"] + (["--device", job.device] if gpu else [])
        cmd = sandboxing.wrap_command(level, argv, exposure, job.limits(), supervise=False)
        try:
            self.proc = processes.spawn(cmd, cwd=self.scratch, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env=env, text=True, start_new_session=True)
        except BaseException:
            shutil.rmtree(self.scratch, ignore_errors=True)
            raise
        self.procs = processes.SlotProcesses(uuid.uuid4().hex, root_pid=self.proc.pid)
        self.jobs = 0  # requests answered
        self.idle_since = time.monotonic()
        self.expiry: threading.Timer | None = None  # ends it once idle for IDLE_S (give_back starts it)
        self._answers: queue.Queue = queue.Queue()
        self._stderr = ""
        for target in (self._read_answers, self._read_stderr):
            threading.Thread(target=target, daemon=True, name="evo-scorer-pipe").start()

    def _read_answers(self) -> None:
        for line in self.proc.stdout:
            self._answers.put(line)
        self._answers.put(None)  # end of output: the scorer exited

    def _read_stderr(self) -> None:
        for chunk in iter(lambda: self.proc.stderr.read(4096), ""):
            self._stderr = (self._stderr + chunk)[-STDERR_TAIL_CHARS:]  # a bounded tail, never a full pipe

    def alive(self) -> bool:
        return self.proc.poll() is None and self.scratch.is_dir()  # a removed scratch cannot take artifacts

    def score(self, request: dict, work: Path) -> SlotResult:
        """Score the artifact in `work` (the genome is dead); a crash, a hang or a breach is a failed slot,
        never ok, and ends this scorer."""
        folder = self.scratch / uuid.uuid4().hex[:12]
        folder.mkdir()
        moved: list[str] = []
        try:
            try:
                _lend_artifact(work, folder, moved)
            except OSError as exc:  # the scorer was sent nothing: it stays usable
                return SlotResult(status="failed", reason="score_error",
                                  detail=f"the artifact could not be handed to the scorer: {exc}")
            self.proc.stdin.write(json.dumps({**request, "artifact": str(folder)}) + "\n")
            self.proc.stdin.flush()
            line = self._answers.get(timeout=SCORE_TIMEOUT_S)
        except queue.Empty:
            self.close()
            return SlotResult(status="failed", reason="score_timeout",
                              detail=f"scoring took over {SCORE_TIMEOUT_S:g} s")
        except OSError:  # the scorer died before the request could be written
            line = None
        finally:
            _return_artifact(folder, work, moved)
            shutil.rmtree(folder, ignore_errors=True)
        if line is None:
            self.close()
            return scorer_result(self.proc.returncode, "", self._stderr)
        result = answer(line, str(folder))
        if result is None:  # not the answer to this request: its answers no longer match its requests
            self.close()
            result = unreadable(line)
        self.jobs += 1
        self.idle_since = time.monotonic()
        return result

    def close(self) -> None:
        if self.proc.poll() is None:
            try:  # told there is nothing more to score (EOF), then ended
                self.proc.stdin.close()
            except OSError:
                pass
        self.procs.kill_all()  # the sandbox's own helpers too, reaped once they are re-parented here
        processes.kill_group(self.proc.pid)
        self.proc.wait()
        processes.unregister_child(self.proc.pid)
        self.procs.reap()
        shutil.rmtree(self.scratch, ignore_errors=True)


def _lend_artifact(work: Path, into: Path, moved: list[str]) -> None:
    """Move the artifact's files into the scorer's scratch for one request (copied across file systems),
    naming each moved one in `moved`; `_return_artifact` moves them back. The runner checked that they are
    plain files with one link, after every process of the slot was dead; a move keeps them so (a hard link
    would not)."""
    for name in artifact.FILES:
        source = work / name
        if not source.exists():
            continue
        try:
            os.rename(source, into / name)
            moved.append(name)
        except OSError:
            shutil.copyfile(source, into / name, follow_symlinks=False)


def _return_artifact(into: Path, work: Path, moved: list[str]) -> None:
    for name in moved:
        os.rename(into / name, work / name)


def shape(job: SlotJob, level: str) -> tuple:
    """What a scorer's sandbox fixes when it starts: jobs of one shape can share a scorer."""
    dataset = Path(job.dataset).resolve()
    manifest = (dataset / "manifest.json").stat()  # a dataset prepared again at this path is another dataset
    return (level, str(dataset), manifest.st_ino, manifest.st_mtime_ns, job.device, job.threads,
            job.env.get("CUDA_VISIBLE_DEVICES"), job.limits())


_IDLE: list[Scorer] = []
_LOCK = threading.Lock()


def take(job: SlotJob, level: str, near: Path) -> Scorer:
    """An idle live scorer of this job's shape, or a new one (its imports start now)."""
    key = shape(job, level)
    found, stale = None, []
    with _LOCK:
        for scorer in list(_IDLE):
            if found is None and scorer.key == key and scorer.alive():
                found = scorer
                _IDLE.remove(scorer)
            elif not scorer.alive() or time.monotonic() - scorer.idle_since > IDLE_S:
                stale.append(scorer)
                _IDLE.remove(scorer)
    for scorer in stale:
        scorer.close()
    if found is not None and found.expiry is not None:
        found.expiry.cancel()  # busy now: a new timer starts when it is given back
    return found or Scorer(job, level, near)


def give_back(scorer: Scorer) -> None:
    """Keep a scorer that answered for the next job of its shape (at most MAX_IDLE idle; others end)."""
    if not scorer.alive():
        scorer.close()
        return
    with _LOCK:
        _IDLE.append(scorer)
        extra = _IDLE[:-MAX_IDLE] if len(_IDLE) > MAX_IDLE else []
        del _IDLE[:len(extra)]
    for old in extra:
        old.close()
    scorer.expiry = threading.Timer(IDLE_S, _expire, args=(scorer, scorer.idle_since))  # a worker with no more
    scorer.expiry.daemon = True  # jobs does not hold the scorer's memory (and GPU context) until it exits
    scorer.expiry.start()


def _expire(scorer: Scorer, idle_since: float) -> None:
    """End `scorer` if it is still idle since `idle_since` (taken and given back since: a later timer's)."""
    with _LOCK:
        if scorer not in _IDLE or scorer.idle_since != idle_since:
            return
        _IDLE.remove(scorer)
    scorer.close()


def discard_idle() -> None:
    """End every idle scorer of this process (the run is over, or the worker's run ended)."""
    with _LOCK:
        idle = list(_IDLE)
        _IDLE.clear()
    for scorer in idle:
        scorer.close()


atexit.register(discard_idle)


def answer(line: str, artifact: str | None = None) -> SlotResult | None:
    """The scorer's JSON answer (its own fields only), or None if the line is not one, or (given `artifact`)
    not the answer for that artifact's request, which the scorer names in its answer."""
    try:
        doc = json.loads(line)
        if isinstance(doc, dict) and doc.get("status") in STATUSES and artifact in (None, doc.get("artifact")):
            return SlotResult.from_dict({k: doc[k] for k in SCORER_FIELDS if k in doc})
    except (ValueError, TypeError):
        pass
    return None


def unreadable(stdout: str) -> SlotResult:
    return SlotResult(status="failed", reason="score_error", detail=f"unreadable scorer output: {stdout[:500]!r}")


def scorer_result(returncode: int, stdout: str, stderr: str) -> SlotResult:
    """The scorer's JSON answer (its own fields only), or a failure naming what went wrong (score_memory,
    score_error)."""
    if returncode == 0:
        return answer(stdout) or unreadable(stdout)
    tail = stderr[-STDERR_TAIL_CHARS:]
    if MEMORY_ERRORS.search(tail) or returncode in (-signal.SIGKILL, 128 + signal.SIGKILL):
        return SlotResult(status="failed", reason="score_memory",
                          detail=f"the scorer ran out of memory (exit code {returncode}): {tail[-500:]}")
    return SlotResult(status="failed", reason="score_error", detail=f"the scorer exited with {returncode}: {tail}")
