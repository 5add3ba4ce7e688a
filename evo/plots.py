"""Pictures of a run, drawn with matplotlib's Agg canvas (no display, no pyplot state).

    progress_figure / draw_progress   every finished evaluation as a dot (crowned, kept, discarded,
                                      re-evaluation, noise; flagged and failed on the bottom edge),
                                      the running best as a staircase, the seed's mean ± the noise floor,
                                      evaluations on the x-axis and wall time on a secondary one
    lineage_figure / draw_lineage     the first-parent chain from the seed to a genome, operators on the
                                      edges, mean val_bpb on the nodes, second parents of crossovers beside

The reporter redraws RUN_DIR/progress.png while a run goes; `evo export` draws the lineage. Only the
journal and the run state are read, so this imports neither the operators, the LLM package, openai
nor libcst (the export works without them).
"""
from __future__ import annotations

import math
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

PROGRESS_SIZE = (11.0, 6.0)  # inches, at DPI: a 1100 x 600 picture
DPI = 100
KIND_STYLE = {  # the legend's order
    "crowned": dict(marker="*", color="#f5b800", s=220, edgecolors="black", linewidths=0.8, zorder=6),
    "kept": dict(marker="o", color="#1f77b4", s=30, zorder=4),
    "discarded": dict(marker="o", color="#b5b5b5", s=20, zorder=3),
    "re-evaluation": dict(marker="D", color="#9467bd", s=30, zorder=4),
    "noise": dict(marker="s", color="#2ca02c", s=30, zorder=4),
    "flagged": dict(marker="X", color="#d62728", s=70, zorder=5, clip_on=False),
    "failed": dict(marker="v", color="#ff7f0e", s=45, zorder=5, clip_on=False),
}
EDGE_KINDS = ("flagged", "failed")  # no trustworthy val_bpb: drawn on the bottom edge
EDGE_Y = 0.03  # their height, in axes coordinates
REEVAL_PURPOSES = ("reeval", "rerun")


@dataclass(frozen=True)
class Point:
    """One finished evaluation as the progress picture draws it."""

    seq: int  # completion number (Evaluation.done_seq)
    kind: str  # a key of KIND_STYLE
    val_bpb: float | None
    genome_id: str


# ---------------------------------------------------------------- reading the run
def finished_times(journal_path: str | Path) -> dict[int, float]:
    """Completion number -> `finished` timestamp of the run's finished evaluations, read-only.
    (The Journal has no named query for these times; this opens its own read-only connection.)"""
    db = sqlite3.connect(Path(journal_path).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT done_seq, finished FROM evaluations WHERE state = 'done' "
                          "AND purpose != 'export' AND done_seq IS NOT NULL").fetchall()
    finally:
        db.close()
    return {seq: finished for seq, finished in rows}


def _seq_at(time: float, times: dict[int, float], genome_id: str | None = None, evaluations=()) -> int | None:
    """The last evaluation finished by `time` (of `genome_id`, when given): events are journaled in the
    same transaction as the evaluation that caused them, just after its `finished` stamp."""
    if genome_id is None:
        seqs = [s for s, t in times.items() if t <= time]
    else:
        seqs = [e.done_seq for e in evaluations if e.genome_id == genome_id and times.get(e.done_seq, math.inf) <= time]
    return max(seqs) if seqs else None


def crowning(journal, evaluations, times: dict[int, float]) -> list[tuple[int, float, str]]:
    """(completion number, mean val_bpb, genome id) of each evaluation that made a genome the best."""
    out = []
    for event in journal.events("new_best"):
        seq = _seq_at(event["time"], times, event.get("genome_id"), evaluations)
        if seq is not None:
            out.append((seq, event["val_bpb"], event["genome_id"]))
    return out


def floor_start(journal, times: dict[int, float]) -> tuple[int, float] | None:
    """(completion number, seed mean) at which the noise floor was fixed, or None before that."""
    events = journal.events("noise_floor")
    if not events:
        return None
    seq = _seq_at(events[0]["time"], times)
    return (seq if seq is not None else min(times, default=0)), events[0]["seed_mean"]


def classify(evaluation, crowned_seqs: set[int], members: set[str]) -> str:
    """The kind of one finished evaluation (see KIND_STYLE)."""
    result = evaluation.result
    status = result.status if result else "failed"
    if status == "flagged":
        return "flagged"
    if status != "ok" or result.val_bpb is None:
        return "failed"
    if evaluation.done_seq in crowned_seqs:
        return "crowned"
    if evaluation.purpose == "noise":
        return "noise"
    if evaluation.purpose in REEVAL_PURPOSES:
        return "re-evaluation"
    return "kept" if evaluation.genome_id in members else "discarded"


def progress_points(run, state) -> tuple[list[Point], list[tuple[int, float, str]], dict[int, float]]:
    """Every finished evaluation as a Point, the crowning evaluations and the completion times."""
    evaluations = run.journal.done_evaluations()
    times = finished_times(run.journal.path)
    crowns = crowning(run.journal, evaluations, times)
    crowned_seqs = {seq for seq, _, _ in crowns}
    members = {m.genome_id for m in state.population}
    points = []
    for e in evaluations:
        kind = classify(e, crowned_seqs, members)
        points.append(Point(e.done_seq, kind, None if kind in EDGE_KINDS else e.result.val_bpb, e.genome_id))
    return points, crowns, times


# ---------------------------------------------------------------- the progress picture
def _y_limits(values: list[float], reference: float | None, floor: float | None) -> tuple[float, float]:
    """Room for the dots near the best; a child far worse than the seed would flatten the rest, so
    values above the top are drawn on the top edge."""
    lo, hi = min(values), max(values)
    ref = reference if reference is not None else float(np.median(values))
    span = max(ref - lo, 3 * (floor or 0.0), 1e-3)
    hi = min(hi, ref + 2.5 * span)
    pad = 0.08 * max(hi - lo, span)
    return lo - pad, hi + pad


def _draw_points(ax, points: list[Point], top: float) -> None:
    edge = ax.get_xaxis_transform()  # x in data, y in axes coordinates
    for kind, style in KIND_STYLE.items():
        mine = [p for p in points if p.kind == kind]
        if not mine:
            continue
        xs = [p.seq for p in mine]
        label = f"{kind} ({len(mine)})"
        if kind in EDGE_KINDS:
            ax.scatter(xs, [EDGE_Y] * len(xs), transform=edge, label=label, gid=kind, **style)
        else:
            ax.scatter(xs, [min(p.val_bpb, top) for p in mine], label=label, gid=kind, **style)


def _draw_best(ax, start: tuple[int, float] | None, crowns, last_seq: int, floor: float | None) -> None:
    """The seed's mean, ± the noise floor around it, and the incumbent's mean as a staircase."""
    if start is None:
        return
    seq0, seed_mean = start
    ax.axhline(seed_mean, color="#2ca02c", linestyle="--", linewidth=1, label=f"seed mean {seed_mean:.4f}",
               gid="seed_mean")
    if floor:
        ax.axhspan(seed_mean - floor, seed_mean + floor, color="#2ca02c", alpha=0.12, linewidth=0,
                   label=f"± noise floor {floor:.4f}", gid="noise_band")
    xs = [seq0] + [seq for seq, _, _ in crowns] + [max(last_seq, seq0)]
    ys = [seed_mean] + [val for _, val, _ in crowns]
    ax.step(xs, ys + ys[-1:], where="post", color="black", linewidth=1.6, label="best (incumbent mean)",
            gid="best", zorder=5)


def _clock(seconds: float, span: float) -> str:
    """Seconds under two minutes, m:ss under an hour, else h:mm."""
    if span < 120:
        return f"{seconds:.{1 if span < 10 else 0}f}s"
    whole = int(round(seconds)) if span < 3600 else int(round(seconds / 60))
    return f"{whole // 60}:{whole % 60:02d}"


def _wall_axis(ax, times: dict[int, float]) -> None:
    """Wall time since the first finished evaluation, on the top axis at the bottom axis's ticks
    (the time per evaluation varies, so the two scales are not proportional)."""
    if len(set(times.values())) < 2:
        return
    seqs = np.array(sorted(times), dtype=float)
    elapsed = np.maximum.accumulate(np.array([times[int(s)] for s in seqs]) - times[int(seqs[0])])
    span = float(elapsed[-1])
    top = ax.secondary_xaxis("top")
    top.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True))  # the bottom axis's ticks
    top.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _clock(float(np.interp(x, seqs, elapsed)), span)))
    unit = "s" if span < 120 else "m:ss" if span < 3600 else "h:mm"
    top.set_xlabel(f"wall time since the first evaluation ({unit})")


def _title(run, state, start) -> str:
    name = Path(run.path).resolve().name
    best = state.best
    if start is None or best is None or best.mean is None:
        return f"{name}: noise floor not measured yet"
    gain = start[1] - best.mean
    return (f"{name}: best {best.mean:.4f} bpb ({state.incumbent}), {gain:+.4f} bpb over the seed "
            f"({100 * gain / start[1]:+.2f}%)")


def progress_figure(run, state) -> Figure:
    """The run so far: one dot per finished evaluation, the best as a staircase, the noise band."""
    fig = Figure(figsize=PROGRESS_SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    points, crowns, times = progress_points(run, state)
    start = floor_start(run.journal, times)
    fig.suptitle(_title(run, state, start), fontsize=12, gid="title")
    ax.set_xlabel("evaluations (completion order)")
    ax.set_ylabel("val_bpb (lower is better)")
    ax.grid(True, alpha=0.3)
    values = [p.val_bpb for p in points if p.val_bpb is not None]
    if not points:
        ax.text(0.5, 0.5, "no finished evaluation yet", transform=ax.transAxes, ha="center", va="center")
        return fig
    bottom, top = _y_limits(values, start[1] if start else None, state.floor) if values else (0.0, 1.0)
    ax.set_ylim(bottom, top)
    last = max(p.seq for p in points)
    ax.set_xlim(0.5, last + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True))
    _draw_best(ax, start, crowns, last, state.floor)
    _draw_points(ax, points, top)
    _wall_axis(ax, times)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    """Write the figure as a PNG, atomically (a viewer never sees half a picture)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=DPI)
    os.replace(tmp, path)
    return path


def draw_progress(run, state, path: str | Path) -> Path:
    """progress_figure written to `path` (PNG)."""
    return save(progress_figure(run, state), path)


# ---------------------------------------------------------------- the lineage picture
def _node_text(gid: str, rec) -> str:
    if rec is None or rec.mean is None:
        return f"{gid}  not scored" + (f" (FLAGGED: {rec.flagged})" if rec and rec.flagged else "")
    return f"{gid}  {rec.mean:.4f} bpb (n={len(rec.vals)})" + (f"  FLAGGED: {rec.flagged}" if rec.flagged else "")


def _node_colors(means: list[float | None]):
    """Nodes colored by mean val_bpb (green: lower), grey when not scored."""
    from matplotlib import colormaps, colors

    known = [m for m in means if m is not None]
    norm = colors.Normalize(min(known), max(known) + 1e-12) if known else None
    cmap = colormaps["RdYlGn_r"]
    return [cmap(norm(m)) if m is not None else "#dddddd" for m in means]


def _draw_second_parent(ax, journal, state, parent: str, y: float) -> None:
    """A crossover's other parent, beside the chain, with a dashed edge into the child at height y."""
    rec = state.records.get(parent)
    ax.scatter([-1.6], [y + 0.5], s=140, c="#dddddd", edgecolors="black", zorder=3, gid="second_parent")
    ax.annotate("", xy=(-0.12, y + 0.06), xytext=(-1.5, y + 0.45),
                arrowprops=dict(arrowstyle="->", linestyle="--", color="#777777"))
    ax.text(-1.85, y + 0.5, _node_text(parent, rec), ha="right", va="center", fontsize=8, color="#444444",
            family="monospace")


def lineage_figure(journal, state, chain: list[str]) -> Figure:
    """The ancestry of chain[-1] from the seed (top) down, as `evo.export.lineage` gives the chain."""
    n = len(chain)
    fig = Figure(figsize=(12, min(1.6 + 0.8 * n, 60)), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.01, 0.01, 0.98, 1 - 0.9 / fig.get_figheight()))
    ax.set_axis_off()
    ax.set_xlim(-4.5, 8.5)
    ax.set_ylim(-0.6, n - 0.4)
    recs = [state.records.get(gid) for gid in chain]
    colors = _node_colors([r.mean if r else None for r in recs])
    for depth, (gid, rec) in enumerate(zip(chain, recs)):
        y = n - 1 - depth
        genome = journal.genome(gid)
        ax.scatter([0], [y], s=260, c=[colors[depth]], edgecolors="black", zorder=3, gid="node")
        ax.text(0.35, y, _node_text(gid, rec), va="center", fontsize=10, family="monospace")
        why = (genome.rationale.splitlines() or [""])[0]
        if why:
            ax.text(0.35, y - 0.28, why[:90], va="center", fontsize=7.5, color="#666666")
        if depth:
            ax.annotate("", xy=(0, y + 0.14), xytext=(0, y + 0.86), arrowprops=dict(arrowstyle="->"))
            ax.text(-0.15, y + 0.5, genome.operator, ha="right", va="center", fontsize=9, style="italic",
                    color="#1f4e99", gid="operator")
        for parent in genome.parents[1:]:
            _draw_second_parent(ax, journal, state, parent, y)
    first, last = recs[0], recs[-1]
    gain = (f", {first.mean - last.mean:+.4f} bpb over the seed"
            if first and last and first.mean is not None and last.mean is not None else "")
    fig.suptitle(f"Lineage of {chain[-1]}: {n - 1} generation(s) from the seed{gain}", fontsize=12,
                 gid="title")
    fig.text(0.99, 0.005, "node: mean val_bpb (green = lower); edge: the operator that made the child; "
             "dashed: a crossover's second parent", ha="right", va="bottom", fontsize=7.5, color="#666666")
    return fig


def draw_lineage(journal, state, chain: list[str], path: str | Path) -> Path:
    """lineage_figure written to `path` (PNG)."""
    return save(lineage_figure(journal, state, chain), path)
