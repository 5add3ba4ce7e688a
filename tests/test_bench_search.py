"""scripts/bench_search.py on a small made-up landscape: every strategy runs, evo's through its real
loop (Scheduler, RunState, Breeder, SQLite journal) on the simulated slot, and the last line has the
documented shape."""
import csv
import math
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from evo.operators.space import knob_space

ROOT = Path(__file__).resolve().parent.parent


def made_up_landscape(path: Path, n: int = 40) -> None:
    """A smooth bpb over tiny_cpu's knobs (best near LEARNING_RATE 0.005), noisy repeats, and failures
    at the widest, deepest corner: the CSV columns scripts/landscape.py writes."""
    space, own = knob_space((ROOT / "genomes" / "tiny_cpu.py").read_text())
    rng = random.Random(0)
    configs = [("seed", own)] + [(f"p{i:03d}", space.from_unit([rng.random() for _ in space.dimensions]))
                                 for i in range(n)]
    columns = ["config", "harness_seed", "budget_s", *space.names, "status", "reason", "val_bpb", "steps",
               "train_seconds", "cpu_share", "seconds"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for k, (name, values) in enumerate(configs):
            true = 2.4 + (math.log10(values["LEARNING_RATE"]) + 2.3) ** 2 + 0.05 * abs(values["DEPTH"] - 2)
            failed = values["WIDTH"] >= 512 and values["DEPTH"] >= 6
            for seed in range(3 if k < 5 else 1):
                writer.writerow({"config": name, "harness_seed": seed, "budget_s": 30, **values,
                                 "status": "failed" if failed else "ok", "reason": "out_of_memory" if failed else "",
                                 "val_bpb": "" if failed else true + rng.gauss(0, 0.03), "steps": 100,
                                 "train_seconds": 30, "cpu_share": 0.9, "seconds": 40})


@pytest.mark.slow
def test_the_bench_runs_every_strategy_on_the_simulated_slot_and_prints_the_search_line(tmp_path):
    landscape = tmp_path / "landscape.csv"
    made_up_landscape(landscape)
    cache = tmp_path / "cells.json"

    def bench():
        return subprocess.run([sys.executable, "scripts/bench_search.py", "--landscape", str(landscape), "--evals",
                               "20", "--reps", "2", "--plot", str(tmp_path / "bench.png"), "--cache", str(cache)],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)

    out = bench()
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert re.fullmatch(r"search: evals=20 reps=2 evo=\d\.\d{4} greedy=\d\.\d{4} random=\d\.\d{4} tpe=\d\.\d{4} "
                        r"cmaes=\d\.\d{4} false_crown=\d\.\d\d", lines[-1]), lines[-1]
    for name in ("evo", "evo-gp", "evo-tpe", "evo-cmaes", "evo-random", "greedy", "random", "tpe", "gp", "cmaes"):
        assert any(line.startswith(f"| {name} | 20 |") for line in lines), name
    header = next(line for line in lines if line.startswith("| strategy |"))
    assert "P(better by > noise s.d.)" in header
    for row in (line for line in lines if re.match(r"\| [a-z-]+ \| 20 \|", line)):
        cells = [c.strip() for c in row.strip("|").split("|")]
        better, found, false_crown = float(cells[4]), float(cells[5]), float(cells[6])
        assert 0.0 <= found <= better <= 1.0 and better + false_crown <= 1.0, row  # found: better by a margin
    assert (tmp_path / "bench.png").stat().st_size > 10_000
    again = bench()  # every cell from the cache: the same table, nothing run again
    assert again.returncode == 0, again.stderr[-3000:]
    table = [line for line in lines if line.startswith("|")]
    assert [line for line in again.stdout.splitlines() if line.startswith("|")] == table
    assert again.stdout.count("(from the cache)") == 10 and again.stdout.strip().splitlines()[-1] == lines[-1]


def test_a_bad_set_names_itself_and_the_form_to_use_and_measures_nothing(tmp_path):
    out = subprocess.run([sys.executable, "scripts/bench_search.py", "--set", "evo.operators.studies.NO_SUCH=1",
                          "--cache", str(tmp_path / "cells.json")], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "NO_SUCH" in out.stderr and "MODULE.NAME=VALUE" in out.stderr
    assert not (tmp_path / "cells.json").exists()
