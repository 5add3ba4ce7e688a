"""Dispatch utilization on Dask workers: busy slot-seconds over available slot-seconds.

For each worker count N: a real `dask scheduler`, N `dask worker` processes (one thread each, so
one CPU slot each) and `evo run --dask-scheduler` on a genome that trains for `--budget` seconds
(tests/genomes/evo_tiny.py), `--per-slot` evaluations per slot. Utilization is the run's own
measure (the session_end event's slot_utilization: the workers' slot seconds over slots x the
session's wall time), so what it misses is the dispatch path: proposing, submitting, shipping the
job and the dataset, sending the result back, journaling.

    flock /tmp/evo-cpu.lock python scripts/bench_dispatch.py --workers 1 2 4
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
        return {"workers": n_workers, "evals": len(slot_s), "wall_s": wall, "utilization": end["slot_utilization"],
                "slot_s_median": statistics.median(slot_s)}
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
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    rows = []
    for n in args.workers:
        with tempfile.TemporaryDirectory(prefix=f"evo-dispatch-{n}-") as tmp:
            env["EVO_DATA_DIR"] = os.environ.get("EVO_DATA_DIR") or str(Path(tmp) / "data")
            rows.append(measure(n, args.budget, args.per_slot, Path(tmp), env))
            r = rows[-1]
            print(f"workers {n}: {r['evals']} evaluations in {r['wall_s']:.0f} s, median slot "
                  f"{r['slot_s_median']:.1f} s, utilization {r['utilization']:.3f}", flush=True)
    print("\n| workers | evaluations | wall s | median slot s | utilization |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['evals']} | {r['wall_s']:.0f} | {r['slot_s_median']:.1f} | "
              f"{r['utilization']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
