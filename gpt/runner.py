"""The slot runner: train one genome in a subprocess under the harness clock, then score it.

One slot, step by step:
1. a fresh evaluation directory; the genome is copied to `work/genome.py`;
2. the scorer process starts at once (it imports torch while the genome trains);
3. `python genome.py` runs in its own process group with a minimal environment (no API
   keys: the parent's environment is not inherited) and a slot spec naming only the
   train split; stdout and stderr go to size-capped files;
4. at `budget + grace` seconds the whole group is killed; the group is killed anyway
   when the genome exits, so nothing of it outlives the slot;
5. if an artifact was submitted, the scorer scores it; `result.json` records everything.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import gpt
from gpt.lab import ARTIFACT_NAME, EXPORT_ERROR_NAME, SPEC_ENV, TIMINGS_NAME, SlotSpec

DEFAULT_OUTPUT_CAP = 4 * 1024 * 1024
STDERR_TAIL_CHARS = 3000
SCORE_TIMEOUT_S = 600.0


def default_grace(budget_s: float) -> float:
    """Time past the budget for export and shutdown before the hard kill."""
    return max(10.0, 0.2 * budget_s)


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


def genome_env(spec_path: Path, work: Path, threads: int, extra: dict) -> dict:
    """The genome's whole environment: built from scratch, never copied from the parent."""
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
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    env.update({k: str(v) for k, v in extra.items()})
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


def train(job: SlotJob, out: Path) -> dict:
    """Run the genome's training process under the hard wall clock; return what the runner saw."""
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(job.genome, work / "genome.py")
    spec_path = out / "slot_spec.json"
    from gpt.data import Dataset

    dataset = Dataset(Path(job.dataset))
    SlotSpec(budget_s=job.budget_s, device=job.device, seed=job.seed, vocab_size=dataset.tokenizer.vocab_size,
             train_path=str(dataset.train_path), out_dir=str(work), eval_seq_len=job.eval_seq_len,
             threads=job.threads).write(spec_path)
    grace = job.grace_s if job.grace_s is not None else default_grace(job.budget_s)
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "genome.py"], cwd=work, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=genome_env(spec_path, work, job.threads, job.env), start_new_session=True)
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
        _kill_group(proc.pid)  # also ends anything the genome left running in its group
        proc.wait()
    train_seconds = time.monotonic() - start
    for p in pumps:
        p.join(timeout=5)
    return {"timed_out": timed_out, "returncode": proc.returncode, "train_seconds": train_seconds,
            "grace_s": grace, "work": work}


def run_slot(job: SlotJob) -> dict:
    """Train and score one genome; write and return `result.json`'s content."""
    slot_start = time.monotonic()
    out = Path(job.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    scorer = _start_scorer(job.threads)
    try:
        ran = train(job, out)
        work = ran["work"]
        result = {"status": "failed", "reason": None, "detail": None}
        artifact = work / ARTIFACT_NAME
        if ran["timed_out"]:
            result.update(reason="timeout", detail=f"killed at budget {job.budget_s:g} s + grace {ran['grace_s']:g} s")
        elif (work / EXPORT_ERROR_NAME).exists():
            result.update(reason="export_error", detail=(work / EXPORT_ERROR_NAME).read_text()[:4000])
        elif ran["returncode"] != 0:
            result.update(reason="crash", detail=f"exit code {ran['returncode']}")
        elif not artifact.exists():
            result.update(reason="no_submit", detail="the genome exited without calling run.submit(model)")
        else:
            request = {"artifact": str(artifact), "dataset": job.dataset, "seq_len": job.eval_seq_len,
                       "eval_tokens": job.eval_tokens, "device": job.device, "seed": job.seed,
                       "test": job.test, "threads": job.threads}
            eval_start = time.monotonic()
            try:
                stdout, stderr = scorer.communicate(json.dumps(request), timeout=SCORE_TIMEOUT_S)
                result = json.loads(stdout) if scorer.returncode == 0 else {
                    "status": "failed", "reason": "score_error", "detail": stderr[-STDERR_TAIL_CHARS:]}
            except subprocess.TimeoutExpired:
                result = {"status": "failed", "reason": "score_timeout", "detail": f"scoring took over {SCORE_TIMEOUT_S} s"}
            result["eval_seconds"] = time.monotonic() - eval_start
    finally:
        if scorer.poll() is None:
            try:
                scorer.communicate("", timeout=30)
            except subprocess.TimeoutExpired:
                _kill_group(scorer.pid)
        _kill_group(scorer.pid)
    lab_timings = {}
    if (work / TIMINGS_NAME).exists():
        try:
            lab_timings = json.loads((work / TIMINGS_NAME).read_text())
        except ValueError:
            pass
    result.update(
        budget_s=job.budget_s, seed=job.seed, device=job.device, returncode=ran["returncode"],
        train_seconds=ran["train_seconds"], slot_seconds=time.monotonic() - slot_start,
        export_seconds=lab_timings.get("export_s"),
        startup_seconds=(ran["train_seconds"] - lab_timings["train_s"] - lab_timings["export_s"]) if lab_timings else None,
        stderr_tail=_tail(out / "stderr.txt") if result["status"] == "failed" else "",
        steps=_parse_steps(out / "stdout.txt"),
    )
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


def _parse_steps(path: Path):
    """The `steps:` line a genome prints in its summary, if any (informational only)."""
    try:
        for line in reversed(path.read_text(errors="replace").splitlines()[-50:]):
            if line.startswith("steps:"):
                return int(line.split(":", 1)[1].strip())
    except (OSError, ValueError):
        pass
    return None
