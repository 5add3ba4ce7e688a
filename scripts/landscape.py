"""Measure the knob landscape of a genome with real `evo eval`s, for scripts/bench_search.py.

A scrambled Sobol design over the genome's typed knob space (evo/operators/space.py), 60% over
the whole space and 40% in a box around the genome's own values, each point evaluated once, plus
the genome's own configuration and the first REPEATED-1 (local) design points evaluated REPEATS times with fresh harness seeds (the noise model). Rows are appended to the CSV
as they finish, so a stopped run continues where it was; a row whose slot was starved of CPU
(cpu_share < 0.75) is run again by the next invocation, and readers take the last row per key.

    flock /tmp/evo-cpu.lock python scripts/landscape.py            # ~80 min on 2 CPU cores
    python scripts/landscape.py --points 8 --repeated 2 --budget 3  # a quick look
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scipy.stats import qmc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evo.operators.space import knob_space, write_values  # noqa: E402

RESULT_FIELDS = ("status", "reason", "val_bpb", "steps", "train_seconds", "cpu_share")
CONTENDED_SHARE = 0.75  # a row whose slot got less of its threads' CPU time was starved: run it again
LOCAL_HALF_WIDTH = 0.25  # the local design: a box of +-0.25 around the genome's own point, in the unit embedding


def design(space, own: dict, n: int, local_share: float, seed: int) -> list[dict]:
    """n configurations: a share spread over the whole space, the rest over a box around the genome's
    own point (where a search spends most of its evaluations). Scrambled Sobol points, cut to n."""
    n_local = round(n * local_share)
    centre = space.to_unit(own)
    out = []
    for count, local in ((n_local, True), (n - n_local, False)):  # local first: the repeated ones
        if count == 0:
            continue
        sampler = qmc.Sobol(d=len(space.dimensions), scramble=True, seed=seed + local)
        for p in sampler.random(1 << max(1, (count - 1).bit_length()))[:count]:
            if local:
                p = [min(max(c + (u - 0.5) * 2 * LOCAL_HALF_WIDTH, 0.0), 1.0) for c, u in zip(centre, p)]
            out.append(space.from_unit(p))
    return out


def contended(row: dict) -> bool:
    """A row measured while something else took the CPU (a later row for the same key replaces it)."""
    return row.get("status") == "ok" and float(row.get("cpu_share") or 1.0) < CONTENDED_SHARE


def evaluate(genome_text: str, name: str, seed: int, budget: float, workdir: Path) -> dict:
    """One `evo eval` of a genome text; the fields of its result.json."""
    path = workdir / f"{name}.py"
    path.write_text(genome_text)
    out = workdir / f"{name}-s{seed}"
    subprocess.run([sys.executable, "-m", "evo.cli", "eval", str(path), "--budget", str(budget),
                    "--seed", str(seed), "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    try:
        result = json.loads((out / "result.json").read_text())
    except (OSError, ValueError):
        return {"status": "failed", "reason": "no result.json"}
    return {k: result.get(k) for k in RESULT_FIELDS}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--genome", default=str(ROOT / "genomes" / "tiny_cpu.py"))
    ap.add_argument("--out", default=str(ROOT / "scripts" / "landscape_tiny_cpu.csv"))
    ap.add_argument("--points", type=int, default=100, help="design points, evaluated once each")
    ap.add_argument("--local-share", type=float, default=0.4, help="share of the points near the genome's own")
    ap.add_argument("--repeated", type=int, default=10, help="configurations evaluated --repeats times")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget", type=float, default=30.0, help="slot budget, seconds (cpu-demo: 30)")
    ap.add_argument("--seed", type=int, default=0, help="design seed")
    args = ap.parse_args()

    source = Path(args.genome).read_text()
    space, own = knob_space(source)
    configs = [("seed", own)] + [(f"p{i:03d}", v) for i, v in enumerate(design(space, own, args.points, args.local_share, args.seed))]
    jobs = [(name, values, 0) for name, values in configs]
    jobs += [(name, values, rep) for name, values in configs[:args.repeated] for rep in range(1, args.repeats)]
    out = Path(args.out)
    done = set()
    if out.exists():
        with out.open() as f:
            done = {(row["config"], int(row["harness_seed"])) for row in csv.DictReader(f) if not contended(row)}
    columns = ["config", "harness_seed", "budget_s", *space.names, *RESULT_FIELDS, "seconds"]
    new_file = not out.exists()
    with out.open("a", newline="") as f, tempfile.TemporaryDirectory() as tmp:
        writer = csv.DictWriter(f, columns)
        if new_file:
            writer.writeheader()
        todo = [j for j in jobs if (j[0], j[2]) not in done]
        for k, (name, values, rep) in enumerate(todo, 1):
            start = time.time()
            try:
                text = write_values(source, values)[0]
            except Exception:  # the genome's own values: nothing to write
                text = source
            row = evaluate(text, name, rep, args.budget, Path(tmp))
            writer.writerow({"config": name, "harness_seed": rep, "budget_s": args.budget, **values, **row,
                             "seconds": round(time.time() - start, 1)})
            f.flush()
            print(f"[{k}/{len(todo)}] {name} seed {rep}: {row.get('status')} val_bpb {row.get('val_bpb')}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
