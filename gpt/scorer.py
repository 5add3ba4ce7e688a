"""The runner's side of the trusted scorer: the sandboxed `python -m gpt.score` process of one slot.

gpt/score.py is the code that runs inside that process; this module starts it at the slot's
sandbox level, hands it the request once the genome is gone, and turns its answer (or its crash,
hang or memory death) into a `SlotResult`. Of the answer the runner keeps only the fields the
scorer owns (`gpt.result.SCORER_FIELDS`).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import gpt
from gpt import processes
from gpt import sandbox as sandboxing
from gpt.result import SCORER_FIELDS, STATUSES, SlotResult
from gpt.training import MEMORY_ERRORS, STDERR_TAIL_CHARS

if TYPE_CHECKING:
    from gpt.job import SlotJob

SCORE_TIMEOUT_S = 600.0


class Scorer:
    """The trusted scorer process, sandboxed at the slot's level. It starts with the slot (importing
    torch takes seconds) and gets its request on stdin once the genome is gone; its answer comes
    back on a stdout pipe the runner owns. It sees the dataset and the genome's work dir read-only,
    writes only a private scratch dir, and has no network."""

    def __init__(self, job: SlotJob, stage: Path, level: str, work: Path):
        scratch = stage / "scorer"  # the slot's out dir, or a warm slot's staging folder (gpt.warm)
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
        self.proc = processes.spawn(cmd, cwd=scratch, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=env, text=True, start_new_session=True)
        self.procs = processes.SlotProcesses(uuid.uuid4().hex, root_pid=self.proc.pid)
        self.used = False

    def score(self, request: dict) -> SlotResult:
        """Send the request, wait for the answer; a crash, a hang or a breach is a failed slot, never ok."""
        self.used = True
        try:
            stdout, stderr = self.proc.communicate(json.dumps(request), timeout=SCORE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.close()
            return SlotResult(status="failed", reason="score_timeout",
                              detail=f"scoring took over {SCORE_TIMEOUT_S:g} s")
        return scorer_result(self.proc.returncode, stdout, stderr)

    def close(self) -> None:
        if not self.used and self.proc.poll() is None:
            try:  # an unused scorer is told there is nothing to score (EOF), then ended
                self.proc.stdin.close()
            except OSError:
                pass
        self.procs.kill_all()  # the sandbox's own helpers too, reaped once they are re-parented here
        processes.kill_group(self.proc.pid)
        self.proc.wait()
        processes.unregister_child(self.proc.pid)
        self.procs.reap()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


def scorer_result(returncode: int, stdout: str, stderr: str) -> SlotResult:
    """The scorer's JSON answer (its own fields only), or a failure naming what went wrong (score_memory,
    score_error)."""
    if returncode == 0:
        try:
            answer = json.loads(stdout)
            if isinstance(answer, dict) and answer.get("status") in STATUSES:
                return SlotResult.from_dict({k: answer[k] for k in SCORER_FIELDS if k in answer})
        except (ValueError, TypeError):
            pass
        return SlotResult(status="failed", reason="score_error", detail=f"unreadable scorer output: {stdout[:500]!r}")
    tail = stderr[-STDERR_TAIL_CHARS:]
    if MEMORY_ERRORS.search(tail) or returncode in (-signal.SIGKILL, 128 + signal.SIGKILL):
        return SlotResult(status="failed", reason="score_memory",
                          detail=f"the scorer ran out of memory (exit code {returncode}): {tail[-500:]}")
    return SlotResult(status="failed", reason="score_error", detail=f"the scorer exited with {returncode}: {tail}")
