"""Search strategies side by side on a simulated slot fitted to real evaluations.

The simulated slot: a Gaussian process fitted to scripts/landscape_tiny_cpu.csv (real `evo eval`s of
genomes/tiny_cpu.py over its knob space, see scripts/landscape.py) gives a configuration's true
(noise-free) val_bpb; each evaluation adds Gaussian noise with the s.d. pooled from the CSV's
repeated configurations, drawn from (repetition, genome, harness seed), and configurations the
CSV saw fail (a random-forest classifier) fail. The evo strategies run evo's real loop (Scheduler,
RunState, Breeder, SQLite journal) with this slot in place of the runner; the baselines call the
same slot directly:

    evo        evo's defaults (the knob operator shares of evo/config.py)
    evo-tpe    evo with TPE for every offline child        evo-gp ... GP BO    evo-cmaes ... CMA-ES
    evo-random evo with random knob steps only (the operator before the knob studies)
    evo[k=v,..] evo with these config keys, e.g. evo[gp_share=0.7,tpe_share=0.3]
    greedy     keep-if-better from the seed (autoresearch's rule), random knob steps
    random     random search, reports the best single evaluation
    tpe        Optuna TPE alone, reports its best trial       gp     Optuna's GPSampler alone, likewise
    cmaes      DEAP CMA-ES alone, likewise

Every strategy gets the same number of evaluations (evo's include its noise repeats and
re-evaluations). Reported per strategy and count: the median and quartiles of the true bpb of the
configuration it reports as best, the chance it is truly better than the seed, the chance it is
better by more than the noise s.d. (the simulated form of the demo's bar: a find worth a floor), and
the false-crown rate (reported best truly worse than the seed).

    flock /tmp/evo-cpu.lock python scripts/bench_search.py              # the full table (~30 min)
    python scripts/bench_search.py --quick                              # 50 evaluations, a few minutes
"""
from __future__ import annotations

import argparse
import ast
import csv
import hashlib
import importlib
import json
import math
import random
import re
import statistics
import sys
import tempfile
import time
import warnings
from concurrent.futures import Future
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evo import config as cfg  # noqa: E402
from evo.breeding import Breeder  # noqa: E402
from evo.genome import Genome  # noqa: E402
from evo.journal import Journal  # noqa: E402
from evo.operators.knobs import mutate_knobs  # noqa: E402
from evo.operators.space import knob_space  # noqa: E402
from evo.run import JOURNAL_NAME, Run, harness_seed  # noqa: E402
from evo.scheduler import Scheduler  # noqa: E402
from evo.slots import Slot, SlotPool  # noqa: E402
from evo.state import RunState  # noqa: E402
from gpt.result import SlotResult  # noqa: E402

GENOME = ROOT / "genomes" / "tiny_cpu.py"
LANDSCAPE = ROOT / "scripts" / "landscape_tiny_cpu.csv"
ONLY = {"gp_share": 0.0, "tpe_share": 0.0, "cmaes_share": 0.0, "crossover_rate": 0.0}  # random knob steps
EVO_STRATEGIES = {"evo": {}, "evo-gp": {**ONLY, "gp_share": 1.0}, "evo-tpe": {**ONLY, "tpe_share": 1.0},
                  "evo-cmaes": {**ONLY, "cmaes_share": 1.0}, "evo-random": ONLY}
BASELINES = ("greedy", "random", "tpe", "gp", "cmaes")


# -------------------------------------------------------------------- the simulated slot
def fit_surrogate(x: np.ndarray, mean_bpb: np.ndarray, n_evals: np.ndarray, noise: float):
    """A Gaussian process (Matern 5/2, one length scale per knob) through the configurations' mean bpb,
    each mean's own noise (noise^2 / its evaluations) on the diagonal. Chosen over a random forest by
    10-fold cross-validation on the landscape (RMSE 0.33 vs 0.49 bpb; on the 10 best configurations
    the forest predicts 0.49 bpb too high, smoothing every good region away, the GP 0.08)."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern

    kernel = ConstantKernel(1.0) * Matern(length_scale=np.ones(x.shape[1]), length_scale_bounds=(1e-2, 1e3), nu=2.5)
    alpha = noise ** 2 / n_evals / mean_bpb.var()  # on the normalized targets' scale
    with warnings.catch_warnings():  # length scales at their bounds: knobs that barely matter
        warnings.simplefilter("ignore", ConvergenceWarning)
        return GaussianProcessRegressor(kernel, alpha=alpha, normalize_y=True, n_restarts_optimizer=3,
                                        random_state=0).fit(x, mean_bpb)


class Landscape:
    """True bpb and failure of a configuration, fitted to the measured CSV; noise from its repeats."""

    def __init__(self, path: Path, source: str):
        from sklearn.ensemble import RandomForestClassifier

        self.space, self.seed_values = knob_space(source)
        latest = {}  # (config, harness seed) -> its last row: a starved row was measured again
        for row in csv.DictReader(path.open()):
            latest[(row["config"], row["harness_seed"])] = row
        rows = list(latest.values())
        if not rows:
            raise SystemExit(f"{path} has no rows: run scripts/landscape.py first")
        configs: dict[str, list] = {}
        for row in rows:
            configs.setdefault(row["config"], []).append(row)
        features, targets, counts, failed_x, failed_y, groups = [], [], [], [], [], []
        for name, group in configs.items():
            values = {d.name: ast.literal_eval(group[0][d.name]) for d in self.space.dimensions}
            x = self.space.to_unit(values)
            vals = [float(r["val_bpb"]) for r in group if r["status"] == "ok" and r["val_bpb"]]
            failed_x.append(x)
            failed_y.append(int(not vals))
            if vals:
                features.append(x)
                targets.append(statistics.fmean(vals))
                counts.append(len(vals))
                if len(vals) >= 2:
                    groups.append(vals)
        ss = sum(sum((v - statistics.fmean(g)) ** 2 for v in g) for g in groups)
        dof = sum(len(g) - 1 for g in groups)
        self.noise = math.sqrt(ss / dof) if dof else 0.05
        self.n_rows, self.n_configs, self.n_failed = len(rows), len(configs), sum(failed_y)
        self.model = fit_surrogate(np.array(features), np.array(targets), np.array(counts), self.noise)
        self.failure = None
        if 0 < sum(failed_y) < len(failed_y):
            self.failure = RandomForestClassifier(n_estimators=100, min_samples_leaf=2, random_state=0)
            self.failure.fit(np.array(failed_x), np.array(failed_y))
        self._cache: dict[tuple, float] = {}
        self._failing: dict[tuple, bool] = {}
        self.seed_true = self.true(self.seed_values)

    def true(self, values: dict) -> float:
        key = tuple(sorted(values.items()))
        if key not in self._cache:
            self._cache[key] = float(self.model.predict(np.array([self.space.to_unit(values)]))[0])
        return self._cache[key]

    def fails(self, values: dict) -> bool:
        if self.failure is None:
            return False
        key = tuple(sorted(values.items()))
        if key not in self._failing:
            x = np.array([self.space.to_unit(values)], dtype=np.float32)
            votes = [tree.tree_.predict(x).reshape(-1) for tree in self.failure.estimators_]  # per class
            self._failing[key] = float(np.mean([v[1] / v.sum() for v in votes])) > 0.5
        return self._failing[key]

    def evaluate(self, values: dict, stream: str) -> float | None:
        """One noisy evaluation (None: the configuration fails)."""
        if self.fails(values):
            return None
        return self.true(values) + random.Random(stream).gauss(0.0, self.noise)


class SimulatedExecutor:
    """Stands in for the slot executor: `submit(run_slot, job)` returns a finished future whose result
    is the landscape's answer for the job's genome and harness seed."""

    def __init__(self, landscape: Landscape, rep: int):
        self.landscape, self.rep = landscape, rep
        self.values: dict[str, tuple] = {}  # genome file -> (genome id, knob values)

    def submit(self, fn, job) -> Future:
        if job.genome not in self.values:
            source = Path(job.genome).read_text()
            self.values[job.genome] = (Genome(source=source).id, knob_space(source)[1])
        gid, values = self.values[job.genome]
        val = self.landscape.evaluate(values, f"{self.rep}:{gid}:{job.seed}")
        future: Future = Future()
        if val is None:
            future.set_result(SlotResult(status="failed", reason="out_of_memory", budget_s=job.budget_s,
                                         seed=job.seed, slot_seconds=1.0))
        else:
            future.set_result(SlotResult(status="ok", val_bpb=val, heldout_bpb=val + random.Random(
                f"h:{self.rep}:{job.seed}:{val}").gauss(0.0, self.landscape.noise * 0.2), train_seconds=30.0,
                slot_seconds=36.0, steps=500, budget_s=job.budget_s, seed=job.seed, cpu_seconds=60.0,
                causality="pass", canary="pass", stateless="pass", sandbox="bwrap"))
        return future

    def shutdown(self, wait=True, cancel_futures=False) -> None:
        pass


class QuietReporter:
    """The reporter's interface with nothing drawn: the loop is the subject here, not the pictures."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def run_evo(landscape: Landscape, source: str, evals: int, rep: int, overrides: dict) -> dict:
    """evo's real loop on the simulated slot; returns the incumbent's knob values."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        config = cfg.resolve({}, {"genomes": (str(GENOME),), "out": str(run_dir), "evals": evals, "hours": 0.0,
                                  "seed": rep, **overrides})
        journal = Journal(run_dir / JOURNAL_NAME)
        seed = Genome(source=source, operator="seed", rationale="seed genome")
        journal.start_run({"config": config.to_dict(), "dataset": "", "seeds": [seed.id]},
                          [(seed, [harness_seed(config.seed, seed.id, k) for k in range(config.noise_repeats)])])
        run = Run(run_dir, config, journal, "")
        state = RunState(config, journal)
        reporter = QuietReporter()
        breeder = Breeder(state, journal, run_dir, note=lambda *a: None)
        pool = SlotPool([Slot("sim0", "cpu", 2)], executor=SimulatedExecutor(landscape, rep))
        Scheduler(run, state, breeder, reporter, pool).run()
        best = state.incumbent or seed.id
        return knob_space(journal.genome(best).source)[1]


# -------------------------------------------------------------------- baselines on the same slot
def run_greedy(landscape: Landscape, source: str, evals: int, rep: int) -> dict:
    rng = random.Random(f"greedy:{rep}")
    best_source, best_val = source, landscape.evaluate(landscape.seed_values, f"{rep}:greedy:seed")
    for k in range(evals - 1):
        child, _ = mutate_knobs(best_source, rng)
        val = landscape.evaluate(knob_space(child)[1], f"{rep}:greedy:{k}")
        if val is not None and (best_val is None or val < best_val):
            best_source, best_val = child, val
    return knob_space(best_source)[1]


def _best_of(trials: list[tuple[dict, float | None]], fallback: dict) -> dict:
    scored = [(v, c) for c, v in trials if v is not None]
    return min(scored, key=lambda t: t[0])[1] if scored else fallback


def run_random(landscape: Landscape, source: str, evals: int, rep: int) -> dict:
    rng = random.Random(f"random:{rep}")
    trials = [(landscape.seed_values, landscape.evaluate(landscape.seed_values, f"{rep}:random:seed"))]
    for k in range(evals - 1):
        values = landscape.space.from_unit([rng.random() for _ in landscape.space.dimensions])
        trials.append((values, landscape.evaluate(values, f"{rep}:random:{k}")))
    return _best_of(trials, landscape.seed_values)


def run_tpe(landscape: Landscape, source: str, evals: int, rep: int, gp: bool = False) -> dict:
    """Optuna alone (TPE, or with `gp` its Gaussian-process sampler), its own defaults, from the seed."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space, dists = landscape.space, landscape.space.distributions()
    sampler = optuna.samplers.GPSampler(seed=rep) if gp else optuna.samplers.TPESampler(seed=rep, multivariate=True)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    study.enqueue_trial(space.to_params(landscape.seed_values))
    trials, worst = [], None
    for k in range(evals):
        trial = study.ask(dists)
        values = space.from_params(trial.params)
        val = landscape.evaluate(values, f"{rep}:{'gp' if gp else 'tpe'}:{k}")
        trials.append((values, val))
        worst = max([v for _, v in trials if v is not None], default=10.0)
        study.tell(trial, val if val is not None else worst + 1.0)
    return _best_of(trials, landscape.seed_values)


def run_cmaes(landscape: Landscape, source: str, evals: int, rep: int) -> dict:
    from deap import cma

    from evo.operators.studies import _Point

    space = landscape.space
    strategy = cma.Strategy(centroid=space.to_unit(landscape.seed_values), sigma=0.2)
    noise = np.random.default_rng(rep)
    trials, batch = [], []
    for k in range(evals):
        point = np.clip(strategy.centroid + strategy.sigma * strategy.BD @ noise.standard_normal(strategy.dim), 0, 1)
        values = space.from_unit(point)
        val = landscape.evaluate(values, f"{rep}:cmaes:{k}")
        trials.append((values, val))
        worst = max([v for _, v in trials if v is not None], default=10.0)
        batch.append(_Point(point, val if val is not None else worst + 1.0))
        if len(batch) == strategy.lambda_:
            strategy.update(batch)
            batch = []
    return _best_of(trials, landscape.seed_values)


def evo_overrides(name: str) -> dict:
    """A named evo strategy, or `evo[key=value,...]` with config keys (e.g. evo[gp_share=0.5,tpe_share=0.5])."""
    if name in EVO_STRATEGIES:
        return EVO_STRATEGIES[name]
    pairs = [kv.split("=") for kv in name[4:-1].split(",") if kv]
    return {k: type(cfg.KEYS[k].default)(v) for k, v in pairs}


def run_gp(landscape: Landscape, source: str, evals: int, rep: int) -> dict:
    return run_tpe(landscape, source, evals, rep, gp=True)


BASELINE_RUNNERS = {"greedy": run_greedy, "random": run_random, "tpe": run_tpe, "gp": run_gp, "cmaes": run_cmaes}


# -------------------------------------------------------------------- the table
_LANDSCAPE: Landscape | None = None  # the worker processes' copy (inherited through fork)


def _one(name: str, evals: int, rep: int) -> float:
    """The true bpb of what strategy `name` reports after `evals` evaluations in repetition `rep`."""
    source = GENOME.read_text()
    if name in EVO_STRATEGIES or name.startswith("evo["):
        values = run_evo(_LANDSCAPE, source, evals, rep, evo_overrides(name))
    else:
        values = BASELINE_RUNNERS[name](_LANDSCAPE, source, evals, rep)
    return _LANDSCAPE.true(values)


def cell_key(name: str, evals: int, reps: int, landscape_path: Path, noise: float) -> str:
    """A cell's name in the --cache file: the strategy, the count, the repetitions and what the slot was
    fitted to (the CSV's bytes and the noise), so a changed landscape never reuses an old cell. Cells
    are deterministic given these (every random draw derives from the repetition), but a change to
    evo's loop or defaults is not in the key: clear the cache after one."""
    digest = hashlib.sha256(landscape_path.read_bytes()).hexdigest()[:12]
    return f"{name}|{evals}|{reps}|{digest}|{noise:.6f}"


def measure(landscape: Landscape, strategies: list[str], counts: list[int], reps: int, progress=print,
            jobs: int = 1, cache: dict | None = None, key=None) -> dict:
    """Every (strategy, count) cell over `reps` repetitions, on `jobs` worker processes; a cell found in
    `cache` (under `key(name, evals)`) is taken from it, and every new one is added to it."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    global _LANDSCAPE
    _LANDSCAPE = landscape
    cache = {} if cache is None else cache
    key = key or (lambda name, evals: f"{name}|{evals}")
    start = time.time()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = {(name, evals): [pool.submit(_one, name, evals, rep) for rep in range(reps)]
                   for name in strategies for evals in counts if key(name, evals) not in cache}
        out = {}
        for cell in ((name, evals) for name in strategies for evals in counts):
            if cell in futures:
                trues = [f.result() for f in futures[cell]]
                q1, median, q3 = np.percentile(trues, [25, 50, 75])
                cache[key(*cell)] = {"median": float(median), "q1": float(q1), "q3": float(q3),
                                     "p_better": statistics.fmean(t < landscape.seed_true for t in trues),
                                     "false_crown": statistics.fmean(t > landscape.seed_true for t in trues),
                                     "found": statistics.fmean(t < landscape.seed_true - landscape.noise
                                                               for t in trues),
                                     "seconds": time.time() - start}
            out[cell] = r = cache[key(*cell)]
            progress(f"{cell[0]:>10} evals={cell[1]:<4} median {r['median']:.4f} [{r['q1']:.4f}, {r['q3']:.4f}] "
                     f"better {r['p_better']:.2f} found {r.get('found', float('nan')):.2f} "
                     f"false_crown {r['false_crown']:.2f} "
                     + (f"({r['seconds']:.0f} s so far)" if cell in futures else "(from the cache)"))
    return out


def markdown(results: dict, landscape: Landscape, reps: int) -> str:
    lines = [f"Seed's true bpb {landscape.seed_true:.4f}; noise s.d. {landscape.noise:.4f} (pooled from the "
             f"landscape's repeats); {landscape.n_configs} configurations, {landscape.n_rows} evaluations, "
             f"{landscape.n_failed} failed; {reps} repetitions per cell.", "",
             "| strategy | evals | median true bpb | quartiles | P(truly better than seed) | P(better by > noise s.d.) "
             "| false crown |", "|---|---|---|---|---|---|---|"]
    for (name, evals), r in results.items():
        lines.append(f"| {name} | {evals} | {r['median']:.4f} | {r['q1']:.4f} .. {r['q3']:.4f} | "
                     f"{r['p_better']:.2f} | {r.get('found', float('nan')):.2f} | {r['false_crown']:.2f} |")
    return "\n".join(lines)


def plot(results: dict, landscape: Landscape, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name in dict.fromkeys(n for n, _ in results):
        pts = sorted((e, r) for (n, e), r in results.items() if n == name)
        xs = [e for e, _ in pts]
        ax.plot(xs, [r["median"] for _, r in pts], marker="o", label=name)
        ax.fill_between(xs, [r["q1"] for _, r in pts], [r["q3"] for _, r in pts], alpha=0.1)
    ax.axhline(landscape.seed_true, color="gray", ls="--", label="seed (true)")
    ax.set_xscale("log")
    ax.set_xlabel("evaluations")
    ax.set_ylabel("true val_bpb of the reported best (median, quartiles)")
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("search strategies on the simulated tiny_cpu slot")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def set_constant(assignment: str) -> None:
    """`--set MODULE.NAME=VALUE`: an existing module constant, replaced by a Python literal."""
    target, _, value = assignment.partition("=")
    module, _, name = target.rpartition(".")
    try:
        owner = importlib.import_module(module)
        getattr(owner, name)
        setattr(owner, name, ast.literal_eval(value))
    except (ImportError, ValueError, SyntaxError, AttributeError) as error:
        raise SystemExit(f"--set {assignment!r}: {error}; give MODULE.NAME=VALUE with an existing constant and a "
                         "Python literal, e.g. evo.operators.studies.LOCAL_SIGMA=0.06")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--landscape", default=str(LANDSCAPE))
    ap.add_argument("--quick", action="store_true", help="50 evaluations, 10 repetitions, the main strategies")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--evals", default="20,50,200")
    ap.add_argument("--strategies", default=",".join([*EVO_STRATEGIES, *BASELINES]))
    ap.add_argument("--noise", type=float, help="the noise s.d. instead of the landscape's pooled one (a sensitivity check)")
    ap.add_argument("--set", action="append", default=[], metavar="MODULE.NAME=VALUE",
                    help="override a module constant for this measurement, e.g. evo.operators.studies.LOCAL_SIGMA=0.06 "
                         "(not in the cache key: use a separate --cache file)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (the cells are independent)")
    ap.add_argument("--plot", help="write the figure here (e.g. docs/images/bench_search.png)")
    ap.add_argument("--cache", help="a JSON file of measured cells: cells in it are not run again, new ones are "
                                    "added (GP cells take minutes each)")
    args = ap.parse_args()
    for assignment in args.set:
        set_constant(assignment)
    landscape = Landscape(Path(args.landscape), GENOME.read_text())
    if args.noise is not None:
        landscape.noise = args.noise
    counts = [50] if args.quick else [int(x) for x in args.evals.split(",")]
    reps = 10 if args.quick else args.reps
    strategies = ["evo", "greedy", "random", "tpe", "gp", "cmaes"] if args.quick else re.split(r",(?![^\[]*\])", args.strategies)
    print(f"landscape: {landscape.n_configs} configurations, noise s.d. {landscape.noise:.4f}, seed true "
          f"{landscape.seed_true:.4f}", flush=True)
    cache = json.loads(Path(args.cache).read_text()) if args.cache and Path(args.cache).exists() else {}
    results = measure(landscape, strategies, counts, reps, progress=lambda s: print(s, flush=True), jobs=args.jobs,
                      cache=cache, key=lambda name, evals: cell_key(name, evals, reps, Path(args.landscape),
                                                                    landscape.noise))
    if args.cache:
        Path(args.cache).write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
    print(markdown(results, landscape, reps))
    if args.plot:
        plot(results, landscape, Path(args.plot))
    n = 50 if 50 in counts else counts[0]
    med = {name: results[(name, n)]["median"] for name in strategies if (name, n) in results}
    false_crown = results[("evo", n)]["false_crown"] if ("evo", n) in results else float("nan")
    print(f"search: evals={n} reps={reps} " + " ".join(f"{k}={med[k]:.4f}" for k in
                                                       ("evo", "greedy", "random", "tpe", "cmaes") if k in med)
          + f" false_crown={false_crown:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
