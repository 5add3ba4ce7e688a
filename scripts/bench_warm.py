"""Slot overhead before and after warm slots, side by side in one run.

Each mode runs `--slots` consecutive slots of one genome in one process, as a run's slot does
(`gpt.runner.run_slot` once per job), alternating modes round by round so both see the same machine:

    before  the harness at `--base REV` (extracted with `git archive`): every slot starts cold
    before-warm  the harness at `--base REV` with a warm dir
    cold    this tree, `warm_dir` empty: every slot starts cold
    warm    this tree with a warm dir: the next slot's interpreter and scorer start while a slot
            exports and is scored; the first slot of each sequence is cold and is left out

Overhead = slot wall time - budget, split into startup (the job's start to `lab.connect()`, the wait
for a cold interpreter included), export (`submit` to the genome's exit) and scoring (the scorer's
request to answer). "cycle" is the wall time from one job's start to the next one's.

Usage: python scripts/bench_warm.py --base 50aac16 [--budgets 10 30] [--slots 3] [--rounds 2]
       [--threads 2] [--modes before,warm] [--genome genomes/tiny_cpu.py]
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DRIVER = r"""
import dataclasses, json, sys, time
from gpt.runner import SlotJob, run_slot
args = json.loads(sys.argv[1])
fields = {f.name for f in dataclasses.fields(SlotJob)}
last = None
for k in range(args["slots"]):
    job = dict(genome=args["genome"], dataset=args["dataset"], out_dir=f"{args['out']}/s{k}", budget_s=args["budget"],
               seed=1000 * args["round"] + k, threads=args["threads"])
    if args["warm_dir"] and "warm_dir" in fields:
        job["warm_dir"] = args["warm_dir"]
    start = time.monotonic()
    r = run_slot(SlotJob(**job))
    row = {key: getattr(r, key, None) for key in ("status", "val_bpb", "slot_seconds", "startup_seconds",
                                                  "export_seconds", "eval_seconds", "train_seconds", "steps")}
    row.update(index=k, warm=getattr(r, "warm", False), cycle=(start - last) if last is not None else None)
    last = start
    print(json.dumps(row), flush=True)
"""


def tree_at(rev: str, into: Path) -> Path:
    """The repository's files at `rev`, extracted (no .git): the `before` harness."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_mode(tree: Path, args, budget: float, round_: int, out: Path, dataset: str, warm: bool) -> list[dict]:
    spec = {"genome": str((ROOT / args.genome).resolve()), "dataset": dataset, "out": str(out), "budget": budget,
            "slots": args.slots, "threads": args.threads, "round": round_,
            "warm_dir": str(out / ".warm") if warm else ""}
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(spec)], cwd=tree, env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the {tree} driver failed:\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def med(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the revision to compare with (e.g. the commit before warm slots)")
    ap.add_argument("--genome", default="genomes/tiny_cpu.py")
    ap.add_argument("--budgets", type=float, nargs="+", default=[10, 30])
    ap.add_argument("--slots", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", default="before,warm")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from gpt.data import prepare

    modes = args.modes.split(",")
    dataset = str(prepare("builtin").path)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}, torch {torch.__version__}; base {args.base}; {args.slots} slots x "
          f"{args.rounds} rounds per mode, {args.threads} threads", file=sys.stderr)
    rows: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = tree_at(args.base, Path(tmp) / "base") if {"before", "before-warm"} & set(modes) else None
        for budget in args.budgets:
            for round_ in range(args.rounds):
                for mode in modes:
                    tree = base if mode.startswith("before") else ROOT
                    got = run_mode(tree, args, budget, round_, Path(tmp) / f"{mode}-{budget:g}-{round_}", dataset,
                                   warm=mode.endswith("warm"))
                    for r in got:
                        print(f"budget {budget:g} {mode} round {round_} slot {r['index']}: {r['status']} "
                              f"slot {r['slot_seconds']:.2f} s warm {r['warm']}", file=sys.stderr)
                    kept = [r for r in got if not (mode.endswith("warm") and r["index"] == 0)]
                    rows.setdefault((budget, mode), []).extend(kept)
    print("| budget s | mode | slots | slot s | overhead s | overhead % | startup s | export s | scoring s | "
          "cycle s | steps | val_bpb |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (budget, mode), got in rows.items():
        overhead = med([{**r, "o": r["slot_seconds"] - budget} for r in got], "o")
        print(f"| {budget:g} | {mode} | {len(got)} | {med(got, 'slot_seconds'):.2f} | {overhead:.2f} | "
              f"{100 * overhead / budget:.1f} | {med(got, 'startup_seconds'):.2f} | {med(got, 'export_seconds'):.2f} | "
              f"{med(got, 'eval_seconds'):.2f} | {med(got, 'cycle'):.2f} | {med(got, 'steps'):.0f} | "
              f"{med(got, 'val_bpb'):.3f} |")


if __name__ == "__main__":
    main()
