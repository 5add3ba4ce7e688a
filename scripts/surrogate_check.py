"""How well the benchmark's simulated slot predicts real evaluations it was not fitted to.

For every genome of `genomes/tiny_cpu.py`'s structure that a real run evaluated (for example the
`make demo` runs of scripts/demo_seeds.sh), compare its measured mean val_bpb with the surrogate's
true bpb, both relative to the run's own seed genome (a run's machine and harness seeds shift every
score of the run together). A surrogate that is right about what the search strategies propose
predicts these differences; one that flatters a region shows a bias there.

    python scripts/surrogate_check.py logs/demo-seed1 logs/demo-seed2 logs/demo-seed3
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_search  # noqa: E402
from evo.operators.space import knob_space, structure_id  # noqa: E402
from evo.run import open_run  # noqa: E402
from evo.state import RunState  # noqa: E402
from gpt.errors import UserError  # noqa: E402


def pairs(run_dir: Path, landscape) -> list[tuple[str, str, int, float, float]]:
    """(genome id, operator, evaluations, measured - seed's measured, surrogate - seed's surrogate)."""
    run = open_run(run_dir, readonly=True)  # a clear error for a path that is not a run; never written
    journal = run.journal
    state = RunState.replay(run.config, journal)[0]
    seed_id = state.seed_ids[0]
    structure = structure_id(journal.genome(seed_id).source)
    seed_mean, seed_true = state.records[seed_id].mean, landscape.true(knob_space(journal.genome(seed_id).source)[1])
    out = []
    for gid, rec in state.records.items():
        genome = journal.genome(gid)
        if gid == seed_id or not rec.vals or rec.flagged or structure_id(genome.source) != structure:
            continue
        true = landscape.true(knob_space(genome.source)[1])
        out.append((gid, genome.operator, len(rec.vals), rec.mean - seed_mean, true - seed_true))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run directories of genomes/tiny_cpu.py at the cpu-demo budget")
    args = ap.parse_args()
    landscape = bench_search.Landscape(bench_search.LANDSCAPE, bench_search.GENOME.read_text())
    try:
        rows = [row for run in args.runs for row in pairs(Path(run), landscape)]
    except UserError as exc:
        raise SystemExit(f"surrogate_check: {exc}") from None
    if len(rows) < 3:
        raise SystemExit("fewer than 3 evaluated children of the seed's structure in these runs")
    measured, predicted = [r[3] for r in rows], [r[4] for r in rows]
    errors = [p - m for m, p in zip(measured, predicted)]
    from scipy.stats import spearmanr

    rho = spearmanr(measured, predicted).statistic
    print(f"{len(rows)} children of {len(args.runs)} runs; difference to the run's seed, bpb (negative: better)")
    print(f"measured: median {statistics.median(measured):+.4f}; surrogate: median {statistics.median(predicted):+.4f}")
    print(f"surrogate - measured: mean {statistics.fmean(errors):+.4f}, median {statistics.median(errors):+.4f}, "
          f"RMSE {statistics.fmean(e * e for e in errors) ** 0.5:.4f}; Spearman rank correlation {rho:.3f}")
    better_predicted = sum(p < 0 for p in predicted)
    better_measured = sum(m < 0 for m in measured)
    both = sum(p < 0 and m < 0 for m, p in zip(measured, predicted))
    print(f"predicted better than the seed: {better_predicted}; measured better: {better_measured}; both: {both}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
