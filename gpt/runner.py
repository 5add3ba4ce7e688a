"""The slot runner: train one genome in a subprocess under the harness clock, then score it.

One slot, step by step:
0. static checks (`gpt.static_checks`) read the genome's source: a `reject` finding fails
   the slot at once (reason `rejected`) without starting any process;
1. a fresh evaluation directory; the genome is copied to `work/genome.py`;
2. a scorer process of the slot's shape, in its own sandbox: one kept from an earlier job (its imports
   done), or a new one that imports torch while the genome trains (`gpt.scorer`); in a run, the genome's
   interpreter may have been started while the previous genome was scored (a warm slot, `gpt.warm`), so
   its imports are off this slot's clock;
3. `genome.py` runs (`gpt.training`, under `python -m gpt.starter`) in a sandbox (`gpt.sandbox`: bwrap,
   netns or none; `auto` picks the strongest that works here) with a minimal environment (no API keys: the parent's
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

`run_slot` returns a `gpt.result.SlotResult`; `result.json` is its `to_dict()`.
"""
from __future__ import annotations

import json
import math
import os
import re
import secrets
import signal
import stat
import sys
import time
from pathlib import Path

from gpt import artifact, processes, starter, warm
from gpt import sandbox as sandboxing
from gpt.protocol import EXPORT_ERROR_NAME
from gpt.result import SlotResult
from gpt import scorer as scorers
from gpt.static_checks import check_source, format_findings
from gpt.training import MEMORY_ERRORS, GenomeProcess, Training, tail
from gpt.job import CONTENDED_CPU_SHARE, OVERUSED_CPU_SHARE, SlotJob  # noqa: F401  (the runner's input, imported from here by evo)
from gpt.training import default_grace, kill_all_slots  # noqa: F401  (imported from here by evo)



def _crash_reason(returncode: int, stderr_tail: str) -> tuple[str, str]:
    """crash, refined to memory or disk_limit when the genome died of a limit."""
    if starter.FAILED in stderr_tail:
        return "memory", f"exit code {returncode}: the harness's own imports failed before the genome ran " \
                         "(see stderr: most likely a memory cap too small for torch)"
    if MEMORY_ERRORS.search(stderr_tail):
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


def _rejected(job: SlotJob, findings: list) -> SlotResult:
    """A slot the static checks refused: no process was started, no slot time spent."""
    rejects = [f for f in findings if f.severity == "reject"]
    return SlotResult(status="failed", reason="rejected",
                      detail="static checks rejected the genome:\n" + format_findings(rejects),
                      budget_s=job.budget_s, seed=job.seed, device=job.device, returncode=None, train_seconds=0.0,
                      limits=job.limits().describe())


def _training_outcome(job: SlotJob, out: Path, ran: Training) -> SlotResult | None:
    """Why the slot failed before scoring (status, reason, detail), or None if there is an artifact to score."""
    work = ran.work
    planted = _planted_links(work)
    if planted:
        return SlotResult(status="flagged", reason="artifact_link",
                          detail=f"{', '.join(planted)} in the work dir is a link or not a regular file: the harness "
                                 "reads only files the genome wrote itself")
    if ran.breach:
        return SlotResult(status="failed", reason=ran.breach[0], detail=ran.breach[1])
    if ran.timed_out:
        return SlotResult(status="failed", reason="timeout",
                          detail=f"killed at budget {job.budget_s:g} s + grace {ran.grace_s:g} s")
    if (work / EXPORT_ERROR_NAME).exists():
        return SlotResult(status="failed", reason="export_error", detail=(work / EXPORT_ERROR_NAME).read_text()[:4000])
    if ran.returncode != 0:
        reason, detail = _crash_reason(ran.returncode, tail(out / "stderr.txt"))
        return SlotResult(status="failed", reason=reason, detail=detail)
    if not any((work / name).exists() for name in artifact.FILES):
        return SlotResult(status="failed", reason="no_submit",
                          detail="the genome exited without calling run.submit(model)")
    return None


def run_slot(job: SlotJob) -> SlotResult:
    """Check, train and score one genome; write `result.json` (the result's `to_dict()`) and return the result."""
    slot_start = time.monotonic()
    out = Path(job.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    level = sandboxing.resolve_level(job.sandbox)  # UserError when a named level is not available here
    findings = check_source(Path(job.genome).read_text(errors="replace")) if job.static_checks else []
    if any(f.severity == "reject" for f in findings):  # no slot is spent: no scorer, no genome process
        result = _rejected(job, findings)
    else:
        result = _train_and_score(job, out, level)
    # journal-facing: the sandbox level the genome ran under and every static finding
    result.sandbox, result.static_findings = level, [f.to_dict() for f in findings]
    result.slot_seconds = time.monotonic() - slot_start
    (out / "result.json").write_text(json.dumps(result.to_dict(), indent=1))
    return result


def _train_and_score(job: SlotJob, out: Path, level: str) -> SlotResult:
    """Run the genome beside a scorer of its shape, score what it submitted; the runner's own measurements
    added. A warm slot (gpt.warm) started the genome's interpreter already, and a scorer kept from an earlier
    job (gpt.scorer) has its imports done; the next genome's interpreter starts near this one's deadline
    (bwrap) or once this genome is dead."""
    processes.reap_orphans()
    ready = warm.take(job, level)
    genome = ready.genome if ready else GenomeProcess(job, level, out, bare=not _imports_torch(job))
    try:
        near = Path(job.scorer_dir) if job.scorer_dir else out.parent
        # a test score (evo export) gets a scorer of its own, ended after: no kept process holds test text
        scorer = scorers.Scorer(job, level, near) if job.test else scorers.take(job, level, near)
    except BaseException:
        genome.discard()
        raise
    try:
        early = warm.early_start(job, level)
        prepared = []  # the next job's warm slot, once started
        near_end = (early, lambda: prepared.append(_prepare_next(job, level))) if early is not None else None
        ran = genome.run(job, out, near_end)
        if genome.cancelled:  # a cancelled Dask job: nobody reads this result and no next job comes
            if prepared and (unused := warm.take(job, level)):
                unused.discard()
            result = SlotResult(status="failed", reason="cancelled", detail="the controller cancelled the job")
        else:
            if not prepared:  # the genome is dead (or ended early): the next one's imports overlap the scoring
                _prepare_next(job, level)
            result = _training_outcome(job, out, ran)
        if result is None:
            request = {"dataset": job.dataset, "seq_len": job.eval_seq_len,
                       "eval_tokens": job.eval_tokens, "device": job.device, "test": job.test,
                       "threads": job.threads, "probe_seed": secrets.randbits(63)}  # the genome never sees it
            eval_start = time.monotonic()
            result = scorer.score(request, ran.work)
            result.eval_seconds = time.monotonic() - eval_start
    except BaseException:
        scorer.close()
        raise
    else:
        if job.test:
            scorer.close()
        else:
            scorers.give_back(scorer)  # ended instead if it died
    finally:
        processes.reap_orphans()
        if ready:
            ready.move_into(out)
    if result.ok or (result.flagged and result.reason != "artifact_link"):
        _budget_probe(result, _with_cpu_verdict(ran.clock, job, ran))
    _add_measurements(result, job, ran, out)
    result.warm = ready is not None
    return result


def _imports_torch(job: SlotJob) -> bool:
    """Whether a script may import torch or gpt: if not (a bare test script), its cold start skips them."""
    return bool(re.search(r"\b(torch|gpt)\b", Path(job.genome).read_text(errors="replace")))


def _prepare_next(job: SlotJob, level: str) -> None:
    """The next job's warm slot; if it cannot start, that job starts cold (and meets the same error there)."""
    try:
        warm.prepare(job, level)
    except Exception as exc:  # noqa: BLE001 -- never costs this slot its score
        print(f"evo: no warm slot for the next job ({exc})", file=sys.stderr)


def _add_measurements(result: SlotResult, job: SlotJob, ran: Training, out: Path) -> None:
    """What the runner itself measured of the slot (never what the genome said), onto its result."""
    clock = ran.clock
    result.budget_s, result.seed, result.device, result.returncode = job.budget_s, job.seed, job.device, ran.returncode
    result.train_seconds = clock["train_s"] if clock["train_s"] is not None else ran.wall_seconds
    # startup: the job's wait for the starter's imports (none when warm), then go to connect
    result.export_seconds = clock["export_s"]
    result.startup_seconds = None if clock["startup_s"] is None else clock["startup_s"] + ran.starter_wait_s
    result.cpu_seconds = ran.cpu_seconds
    result.cpu_share, result.contended = _contention(job, ran)
    result.stderr_tail = tail(out / "stderr.txt") if result.failed else ""
    printed = _printed_summary(out / "stdout.txt")
    result.steps, result.params, result.train_loss = printed.get("steps"), printed.get("params"), \
        printed.get("train_loss")
    result.limits, result.leftover_processes = ran.limits, ran.leftover_processes
    result.escaped_processes, result.peak_memory_mb = ran.escaped_processes, ran.peak_memory_mb
    result.pid = ran.pid


def _contention(job: SlotJob, ran: Training) -> tuple[float | None, bool]:
    """The slot's CPU share (None for GPU slots, where CPU time says little) and whether it was starved."""
    if not job.threads or not ran.wall_seconds or not ran.cpu_seconds or ran.timed_out:
        return None, False
    share = ran.cpu_seconds / (ran.wall_seconds * job.threads)
    return share, share < job.contended_share


def _with_cpu_verdict(clock: dict, job: SlotJob, ran: Training) -> dict:
    """The clock's verdict, failed as well if a CPU slot's processes used more cores than its threads: the
    budget is wall seconds on the slot's share of the machine (a genome that raised its own thread count
    took its neighbours' cores, or the controller's). Measured by the runner from /proc, so any way of using
    more cores shows, whatever the genome did."""
    share, _ = _contention(job, ran)
    train_share = _training_share(job, ran, clock)
    verdict = dict(clock, cpu_share=share, train_cpu_share=train_share, cpu_share_limit=OVERUSED_CPU_SHARE)
    over = [(what, s) for what, s in (("while it ran", share), ("while it trained", train_share))
            if s is not None and s > OVERUSED_CPU_SHARE]
    if verdict["pass"] and over:
        what, s = over[-1]
        verdict.update({"pass": False, "detail": f"used {s * job.threads:.2f} cores on average {what}, "
                                                 f"in a slot of {job.threads} thread(s); leave torch's thread count "
                                                 "as lab.connect() sets it and start no threads of its own"})
    return verdict


def _training_share(job: SlotJob, ran: Training, clock: dict) -> float | None:
    """The CPU share of the training window alone (go to submit): over the whole slot, the idle seconds a
    genome may leave after submit (the export allowance) would dilute a second core used while it trained."""
    train_s = clock.get("train_s")
    if not job.threads or ran.train_cpu_seconds is None or not train_s or train_s < 1.0 or ran.timed_out:
        return None
    return ran.train_cpu_seconds / (train_s * job.threads)


def _budget_probe(result: SlotResult, clock: dict) -> None:
    """Flag a genome the runner's clock saw train past its budget, export too slowly, or hand in an
    artifact without run.submit(). Nothing the genome wrote is read here."""
    result.probes["budget"] = clock
    result.budget = "pass" if clock["pass"] else "fail"
    if not clock["pass"]:
        result.flag("budget")


PRINTED_SUMMARY = {"steps": int, "params": int, "train_loss": float}


def _printed_summary(path: Path) -> dict:
    """The `steps:`, `params:` and `train_loss:` lines a genome prints at the end (the last of each
    in the last 50 lines). The genome says them, so they are informational only: shown to the LLM
    operators as what the script printed, never scored."""
    found = {}
    try:
        lines = path.read_text(errors="replace").splitlines()[-50:]
    except OSError:
        return found
    for line in reversed(lines):
        key, _, value = line.partition(":")
        if key in PRINTED_SUMMARY and key not in found:
            try:
                number = PRINTED_SUMMARY[key](value.strip())
            except ValueError:
                continue
            if isinstance(number, int) or math.isfinite(number):
                found[key] = number
    return found


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
        value = getattr(result, key)
        print(f"{key + ':':<15}{value:.6f}" if isinstance(value, float) else f"{key + ':':<15}{value}")
    if not result.ok:
        print(result.detail or "", file=sys.stderr)
    print(f"details: {out / 'result.json'}")
    return 0 if result.ok else 1


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
