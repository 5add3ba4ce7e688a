"""`evo status`: the best genomes and where the run stands, read from the replayed run state."""
from __future__ import annotations

import sys

from evo.run import Run, open_run
from evo.state import RunState


def cmd_status(args) -> int:
    run = open_run(args.run_dir)
    print_status(run, RunState.replay(run.config, run.journal)[0], args.top)
    return 0


def print_status(run: Run, state: RunState, top: int) -> None:
    from rich.console import Console
    from rich.table import Table

    j = run.journal
    console = Console(width=None if sys.stdout.isatty() else 160)
    table = Table(title=f"{run.path}: best genomes")
    for col in ("id", "fitness", "mean val_bpb", "evals", "held-out answer", "flags", "operator", "parent"):
        table.add_column(col, no_wrap=col in ("id", "parent", "operator"))
    ranked = sorted(state.records.items(), key=lambda kv: kv[1].fitness, reverse=True)
    for gid, rec in ranked[:top]:
        genome = j.genome(gid)
        flags = rec.flagged or rec.failed or ""
        if gid == state.incumbent:
            flags = ("best " + flags).strip()
        table.add_row(gid, f"{rec.fitness:.4f}", f"{rec.mean:.4f}" if rec.mean is not None else "-", str(len(rec.vals)),
                      f"{rec.answer:.4f}" if rec.answer is not None else "-", flags, genome.operator,
                      genome.parents[0] if genome.parents else "-")
    console.print(table)
    counts = j.count_by_state()
    console.print(f"evaluations: {counts['done']} done of {run.config.evals or 'unlimited'}, {counts['running']} "
                  f"running, {counts['queued']} queued")
    if state.floor is not None:
        seed, best = state.seed, state.best
        console.print(f"noise floor: {state.floor:.4f} bpb; seed mean {seed.mean:.4f}; best {state.incumbent} "
                      f"{best.mean:.4f} ({seed.mean - best.mean:+.4f} over seed)")
        console.print(f"Thresholdout: {state.thresholdout.state.spent} of {state.thresholdout.state.budget} "
                      "reveals spent")
    console.print(run.integrity_line(), style=None if (j.get_meta("integrity") or {}).get("sealed") else "yellow")
    sandboxes = j.sandboxes_used()
    if sandboxes:
        weak = [s for s in sandboxes if s != "bwrap"]
        console.print(f"sandbox used by evaluations: {', '.join(sandboxes)}"
                      + (" (warning: weaker than bwrap)" if weak else ""))
    for gid, rec in state.records.items():
        if rec.flagged:
            console.print(f"flagged: {gid}: {rec.flagged}", style="red")
    llm = j.llm_totals()
    if llm["calls"]:
        console.print(f"LLM: {llm['calls']} calls, {llm['prompt_tokens']} prompt + {llm['completion_tokens']} "
                      f"completion tokens, ${llm['cost_usd']:.4f}")
