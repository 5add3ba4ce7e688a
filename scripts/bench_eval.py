"""Benchmark `evo eval` of a genome at several budgets: val_bpb and slot overhead, medians of N runs.

Slot overhead = slot wall time - budget, split into startup (process start to lab.connect),
export (lab.submit), scoring (the scorer's wall time after the genome exits) and the rest.
Each run goes through the CLI exactly as a user would (`evo eval GENOME --budget B --seed k`).

Usage: python scripts/bench_eval.py [--genome genomes/tiny_cpu.py] [--budgets 10 30 60] [--repeats 3]
Prints a markdown table for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run(genome: str, budget: float, seed: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "evo.cli", "eval", genome, "--budget", str(budget), "--seed", str(seed),
           "--out", str(out)]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - start
    result = json.loads((out / "result.json").read_text())
    result["cli_wall"] = wall
    if proc.returncode != 0:
        print(f"  run failed: {result.get('status')} {result.get('reason')}", file=sys.stderr)
    return result


def med(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--genome", default="genomes/tiny_cpu.py")
    ap.add_argument("--budgets", type=float, nargs="+", default=[10, 30, 60])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import torch

    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, torch {torch.__version__}", file=sys.stderr)
    rows_out = []
    with tempfile.TemporaryDirectory() as tmp:
        for budget in args.budgets:
            rows = []
            for k in range(args.repeats):
                r = one_run(args.genome, budget, k, Path(tmp) / f"b{budget:g}-{k}")
                r["overhead"] = r["slot_seconds"] - budget
                rows.append(r)
                print(f"budget {budget:g} seed {k}: {r.get('status')} val_bpb {r.get('val_bpb')} "
                      f"slot {r['slot_seconds']:.2f} s steps {r.get('steps')}", file=sys.stderr)
            rows_out.append((budget, rows))
    print("| budget s | val_bpb (median) | val_bpb runs | steps | slot s | overhead s | overhead % | "
          "startup s | export s | scoring s | status |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for budget, rows in rows_out:
        vals = ", ".join(f"{r['val_bpb']:.3f}" for r in rows if r.get("val_bpb") is not None)
        statuses = ",".join(sorted({r.get("status") for r in rows}))
        print(f"| {budget:g} | {med(rows, 'val_bpb'):.3f} | {vals} | {med(rows, 'steps'):.0f} | "
              f"{med(rows, 'slot_seconds'):.2f} | {med(rows, 'overhead'):.2f} | "
              f"{100 * med(rows, 'overhead') / budget:.1f} | {med(rows, 'startup_seconds'):.2f} | "
              f"{med(rows, 'export_seconds'):.2f} | {med(rows, 'eval_seconds'):.2f} | {statuses} |")


if __name__ == "__main__":
    main()
