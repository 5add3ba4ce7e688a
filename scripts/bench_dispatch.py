"""Dispatch utilization on Dask workers: busy slot-seconds over available slot-seconds.

For each worker count N: a real `dask scheduler`, N `dask worker` processes (one thread each, so
one CPU slot each) and `evo run --dask-scheduler` on a genome that trains for `--budget` seconds
(tests/genomes/evo_tiny.py), `--per-slot` evaluations per slot. Utilization is the run's own
measure (the session_end event's slot_utilization: the workers' slot seconds over slots x the
session's wall time), so what it misses is the dispatch path: proposing, submitting, shipping the
job and the dataset, sending the result back, journaling.

    flock /tmp/evo-cpu.lock python scripts/bench_dispatch.py --workers 1 2 4
    flock /tmp/evo-cpu.lock python scripts/bench_dispatch.py --workers 2 --base REV --rounds 3

`--base REV` measures that commit too (a git worktree), alternating with this tree round by round, so
the two are compared on the same machine at the same time. `gaps s` is the time slots sat idle between
one evaluation's finish and their next one's start, summed over slots (the journal's own times).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENOME = ROOT / "tests" / "genomes" / "evo_tiny.py"


def _start(command: list[str], log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=log.open("w"))


def idle_gaps(db) -> list[float]:
    """Seconds each slot sat idle between one evaluation's finish and its next one's start."""
    rows = db.execute("SELECT slot, started, finished FROM evaluations WHERE state = 'done' AND purpose != 'export' "
                      "ORDER BY started").fetchall()
    last, gaps = {}, []
    for slot, started, finished in rows:
        if slot in last:
            gaps.append(max(0.0, started - last[slot]))
        last[slot] = finished
    return gaps


def measure(n_workers: int, budget: float, per_slot: int, folder: Path, env: dict) -> dict:
    info = folder / "scheduler.json"
    procs = [_start([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                     "--no-dashboard", "--scheduler-file", str(info)], folder / "scheduler.log", env)]
    try:
        while not info.exists():
            time.sleep(0.2)
        address = json.loads(info.read_text())["address"]
        for i in range(n_workers):
            procs.append(_start([sys.executable, "-m", "distributed.cli.dask_worker", address, "--name", f"w{i}",
                                 "--nthreads", "1", "--no-nanny", "--no-dashboard"], folder / f"w{i}.log",
                                dict(env, EVO_WORKER_DIR=str(folder / f"worker-{i}"))))
        from distributed import Client

        with Client(address) as client:
            client.wait_for_workers(n_workers, timeout=120)
        out = folder / "run"
        evals = per_slot * n_workers
        command = [sys.executable, "-m", "evo.cli", "run", "--preset", "smoke", "--genome", str(GENOME),
                   "--budget", str(budget), "--evals", str(evals), "--hours", "0", "--out", str(out),
                   "--dask-scheduler", address, "--allow-unsealed", "--quiet"]
        start = time.monotonic()
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        wall = time.monotonic() - start
        if proc.returncode != 0:
            raise SystemExit(f"evo run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        db = sqlite3.connect(out / "journal.sqlite")
        end = json.loads(db.execute("SELECT data FROM events WHERE kind = 'session_end'").fetchone()[0])
        slot_s = [s for (s,) in db.execute("SELECT slot_seconds FROM evaluations WHERE state = 'done'")]
        gaps = idle_gaps(db)
        return {"workers": n_workers, "evals": len(slot_s), "wall_s": wall, "utilization": end["slot_utilization"],
                "slot_s_median": statistics.median(slot_s), "gaps_s": sum(gaps),
                "gap_median_s": statistics.median(gaps) if gaps else 0.0}
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--budget", type=float, default=2.0, help="training seconds of each slot")
    ap.add_argument("--per-slot", type=int, default=6, help="evaluations per slot")
    ap.add_argument("--base", help="also measure this commit (a git worktree), alternating with this tree")
    ap.add_argument("--rounds", type=int, default=1, help="measurements of each tree and worker count")
    args = ap.parse_args()
    trees = {"this tree": ROOT}
    with tempfile.TemporaryDirectory(prefix="evo-dispatch-base-") as base_dir:
        if args.base:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", base_dir, args.base], check=True,
                           capture_output=True)
            trees = {args.base: Path(base_dir), **trees}
        try:
            rows = []
            for _ in range(args.rounds):
                for n in args.workers:
                    for name, root in trees.items():
                        rows.append({"tree": name, **_measure_tree(n, args, root)})
                        r = rows[-1]
                        print(f"{name}, workers {n}: {r['evals']} evaluations in {r['wall_s']:.0f} s, median slot "
                              f"{r['slot_s_median']:.1f} s, idle gaps {r['gaps_s']:.1f} s, utilization "
                              f"{r['utilization']:.3f}", flush=True)
        finally:
            if args.base:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", base_dir], capture_output=True)
    print("\n| tree | workers | runs | evaluations | wall s | median slot s | idle gaps s | median gap s | "
          "utilization |\n|---|---|---|---|---|---|---|---|---|")
    for name in trees:
        for n in args.workers:
            mine = [r for r in rows if r["tree"] == name and r["workers"] == n]
            med = {k: statistics.median(r[k] for r in mine) for k in ("wall_s", "slot_s_median", "gaps_s",
                                                                      "gap_median_s", "utilization")}
            print(f"| {name} | {n} | {len(mine)} | {mine[0]['evals']} | {med['wall_s']:.0f} | {med['slot_s_median']:.1f} "
                  f"| {med['gaps_s']:.1f} | {med['gap_median_s']:.2f} | {med['utilization']:.3f} |")
    return 0


def _measure_tree(n: int, args, root: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(root))
    with tempfile.TemporaryDirectory(prefix=f"evo-dispatch-{n}-") as tmp:
        env["EVO_DATA_DIR"] = os.environ.get("EVO_DATA_DIR") or str(Path(tmp) / "data")
        return measure(n, args.budget, args.per_slot, Path(tmp), env)


if __name__ == "__main__":
    sys.exit(main())
