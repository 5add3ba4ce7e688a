"""Simulate a long search over pure-noise genomes: how far does the best val drift below the
truth, what does Thresholdout (evo.fitness) answer for the same selections, and what does
evo's full rule (noise floor + fresh-seed re-evaluation + Thresholdout penalty) report?

Model of one evaluation of genome g (every genome is noise around one true bpb, TRUE_BPB):
    val     = TRUE_BPB + q + b_g + e_v        held-out = TRUE_BPB + q + e_h
q ~ N(0, q_sd) is the seed luck of this evaluation (shared by both splits: same model),
b_g ~ N(0, b_sd) is a genome's fit to the particular val documents (persists across seeds:
what adaptive selection on a fixed val split exploits), e ~ N(0, e_sd) is split noise.
A cheater (one genome in 200, second scenario) trains on val: b_g = -CHEAT_GAIN.

Rules compared:
  greedy: keep a child whose single val beats the best so far (autoresearch's rule); each
          selection is also put to Thresholdout, whose answer is reported;
  evo:    a child must beat the incumbent's fitness by more than the noise floor, twice (a
          re-evaluation with a fresh seed); fitness = -mean(val) - Thresholdout penalty.

Usage: python scripts/bench_holdout.py [--genomes 5000] [--seeds 20] [--plot docs/holdout.png]
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np

from evo.fitness import make_thresholdout, penalty

TRUE_BPB = 3.0
CHEAT_GAIN = 0.15


def simulate(n: int, seed: int, q_sd: float, b_sd: float, e_sd: float, cheat_every: int = 0, budget: int = 40):
    """One run of both rules over the same stream of genomes. Returns traces and final numbers."""
    rng = np.random.default_rng(seed)

    def evaluate(b):
        q = rng.normal(0, q_sd)
        return TRUE_BPB + q + b + rng.normal(0, e_sd), TRUE_BPB + q + rng.normal(0, e_sd)

    # the noise floor evo measures: repeats of one genome (b fixed) -> q and e only
    floor = float(np.sqrt(q_sd**2 + e_sd**2))
    greedy_t = make_thresholdout(floor, 0.0, 0.0, budget, seed)
    evo_t = make_thresholdout(floor, 0.0, 0.0, budget, seed + 10_000)
    greedy = {"val": np.inf, "answer": None, "truth": TRUE_BPB}
    evo = {"val": TRUE_BPB, "score": TRUE_BPB, "truth": TRUE_BPB}  # the seed, measured well
    trace = []
    for i in range(n):
        cheat = bool(cheat_every) and i % cheat_every == cheat_every - 1
        b = -CHEAT_GAIN if cheat else rng.normal(0, b_sd)
        v1, h1 = evaluate(b)
        if v1 < greedy["val"]:
            answer, _ = greedy_t.answer(v1, h1)
            greedy = {"val": v1, "answer": answer, "truth": TRUE_BPB}
        if v1 < evo["score"] - floor:  # a candidate: re-evaluate with a fresh seed
            v2, h2 = evaluate(b)
            val, held = (v1 + v2) / 2, (h1 + h2) / 2
            answer, _ = evo_t.answer(val, held)
            score = val + penalty(answer, val, floor, 1.0)
            if score < evo["score"] - floor:
                evo = {"val": val, "score": score, "truth": TRUE_BPB}
        trace.append((i, greedy["val"], greedy["answer"], evo["val"], evo["score"]))
    return trace, greedy, evo, greedy_t.state.spent, evo_t.state.spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--genomes", type=int, default=5000)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--q-sd", type=float, default=0.01, help="seed luck per evaluation, bpb")
    ap.add_argument("--b-sd", type=float, default=0.005, help="a genome's persistent fit to the val documents, bpb")
    ap.add_argument("--e-sd", type=float, default=0.002, help="split noise per evaluation, bpb")
    ap.add_argument("--plot", default="", help="write a PNG of one run's traces")
    args = ap.parse_args()
    sd = (args.q_sd, args.b_sd, args.e_sd)

    print(f"{args.genomes} genomes per run, {args.seeds} runs, truth {TRUE_BPB} bpb for every genome; "
          f"q_sd {args.q_sd}, b_sd {args.b_sd}, e_sd {args.e_sd}; medians over runs")
    print(f"{'scenario':<9}{'greedy val':>11}{'its answer':>11}{'reveals':>8}{'evo val':>9}{'evo fitness':>12}"
          f"{'reveals':>8}{'truth':>7}")
    for name, cheat_every in (("noise", 0), ("cheater", 200)):
        rows = []
        for seed in range(args.seeds):
            _, greedy, evo, g_spent, e_spent = simulate(args.genomes, seed, *sd, cheat_every)
            rows.append((greedy["val"], greedy["answer"], g_spent, evo["val"], evo["score"], e_spent))
        med = [statistics.median(col) for col in zip(*rows)]
        print(f"{name:<9}{med[0]:>11.4f}{med[1]:>11.4f}{med[2]:>8.0f}{med[3]:>9.4f}{med[4]:>12.4f}{med[5]:>8.0f}"
              f"{TRUE_BPB:>7.3f}")
    if args.plot:
        plot(args, sd, args.plot)


def plot(args, sd, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (name, cheat_every) in zip(axes, (("pure noise", 0), ("1 genome in 200 trains on val", 200))):
        trace, *_ = simulate(args.genomes, 0, *sd, cheat_every)
        i, g_val, g_answer, e_val, e_score = map(np.array, zip(*trace))
        i = i + 1
        ax.step(i, g_val, where="post", label="greedy: best val")
        ax.step(i, g_answer, where="post", label="greedy: Thresholdout answer")
        ax.step(i, e_score, where="post", label="evo: -fitness of the best")
        ax.axhline(TRUE_BPB, color="gray", lw=1, ls=":", label="truth")
        ax.set_title(name)
        ax.set_xlabel("genomes evaluated")
        ax.set_xscale("log")
    axes[0].set_ylabel("bpb")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
