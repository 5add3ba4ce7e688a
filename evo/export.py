"""`evo export`: a genome as a standalone script, its lineage from the seed, and one test-split score.

The test split is never used in selection; export is the only place it is scored, once
per export, with a fresh harness seed, and the score is journaled. Next to the script go
<id>.lineage.md, <id>.lineage.png (evo/plots.py) and <id>.progress.png (the run's picture).
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from evo.genome import diff_text
from evo.run import Run, open_run
from evo.slots import plan_slots
from evo.state import RunState
from gpt.errors import UserError
from gpt.result import SlotResult
from gpt.runner import SCORING_SUFFIX


def lineage(journal, genome_id: str) -> list[str]:
    """Genome ids from the seed to `genome_id`, following each child's first parent."""
    chain = [genome_id]
    while journal.genome(chain[-1]).parents:
        chain.append(journal.genome(chain[-1]).parents[0])
    return chain[::-1]


def _diff_summary(parent: str, child: str) -> tuple[str, str]:
    diff = diff_text(parent, child, context=0).splitlines()[2:]
    added = sum(1 for line in diff if line.startswith("+"))
    removed = sum(1 for line in diff if line.startswith("-"))
    return f"+{added} -{removed} lines", "\n".join(diff)


def lineage_markdown(run: Run, state: RunState, chain: list[str], test_result: SlotResult,
                     flagged: str | None) -> str:
    j = run.journal
    lines = [f"# Lineage of {chain[-1]}", ""]
    if flagged:
        lines += [f"**FLAGGED: {flagged}.** Exported with --allow-flagged; its scores cannot be trusted.", ""]
    floor = f"{state.floor:.4f} bpb" if state.floor is not None else "not measured yet"  # export during the noise evals
    lines += [run.integrity_line() + ".", ""]
    lines += [f"Run: `{run.path}`. Noise floor: {floor}. "
              f"Test split (scored once, at export): {_fmt(test_result.test_bpb)} bpb "
              f"(status {test_result.status}).", ""]
    for depth, gid in enumerate(chain):
        genome, rec = j.genome(gid), state.records.get(gid)
        metrics = (f"mean val_bpb {rec.mean:.4f} over {len(rec.vals)} evaluation(s), fitness {rec.fitness:.4f}"
                   if rec and rec.vals else "not scored")
        flag = rec.flagged if rec and rec.flagged else None
        lines.append(f"## {depth}. `{gid}` ({genome.operator})" + (f" FLAGGED: {flag}" if flag else ""))
        lines.append("")
        lines.append(f"- rationale: {genome.rationale or '-'}")
        lines.append(f"- metrics: {metrics}")
        if genome.parents:
            summary, diff = _diff_summary(j.genome(genome.parents[0]).source, genome.source)
            lines.append(f"- parents: {', '.join(genome.parents)}; diff against `{genome.parents[0]}`: {summary}")
            lines += ["", "```diff", diff, "```"]
        lines.append("")
    return "\n".join(lines)


def write_pictures(run: Run, state: RunState, chain: list[str], out: Path) -> list[Path]:
    """<id>.lineage.png (the chain drawn) and <id>.progress.png (RUN_DIR/progress.png copied, or drawn
    when the run has none) next to the exported script; one that cannot be drawn is a warning."""
    written = []
    lineage_png, progress_png = out.with_name(f"{out.stem}.lineage.png"), out.with_name(f"{out.stem}.progress.png")
    try:
        from evo import plots  # matplotlib: only when an export is written

        written.append(plots.draw_lineage(run.journal, state, chain, lineage_png))
        current = Path(run.path) / "progress.png"
        if current.is_file():
            written.append(Path(shutil.copyfile(current, progress_png)))
        else:
            written.append(plots.draw_progress(run, state, progress_png))
    except Exception as exc:  # a picture is a view: the script and its test score are the export
        print(f"warning: the export's pictures could not all be drawn ({type(exc).__name__}: {exc})", file=sys.stderr)
    return written


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _export_pool(run: Run):
    """The slot the test score is measured in: on the run's Dask workers when its slots are there (the
    controller may be a login node without the run's GPU), else one slot of this machine's."""
    from evo.slots import SlotPool, open_pool

    c = run.config
    if not (c.dask_scheduler or c.kind):
        return SlotPool(plan_slots(c.device, 1))
    sealed = bool((run.journal.get_meta("integrity") or {}).get("sealed"))
    try:
        return open_pool(c, run.dataset, note=lambda text: print(text, file=sys.stderr, flush=True), sealed=sealed)
    except UserError as exc:
        raise UserError(f"{exc}; or export on other slots: `evo export {run.path} --dask-scheduler ADDRESS` "
                        "(a running scheduler) or `--local` (this machine)") from None


def _score_on_test(run: Run, gid: str) -> SlotResult:
    """The genome's one test-split score: a journaled `export` evaluation with a fresh harness seed.
    A slot lost on the way (its worker left) is journaled as a failed export, never left running."""
    from evo.cluster import SlotLost
    from gpt.runner import kill_all_slots

    j = run.journal
    pool = _export_pool(run)
    try:
        if not pool.free() and pool.wait_for_slot():
            raise UserError("no slot is free for the export's test score; start a Dask worker, or pass --local")
        slot = pool.free()[0]
        eval_id = j.queue_evaluation(gid, "export", run.next_seed(gid))
        attempt = j.mark_running(eval_id, slot.name)
        job = run.slot_job(run.genome_path(gid), run.eval_dir(eval_id, attempt), j.evaluation(eval_id).seed, test=True)
        print(f"scoring {gid} once on the test split ({run.config.budget_s:g} s of training, slot {slot.name})...")
        try:
            result = pool.submit(slot, job).result()
        except SlotLost as lost:
            result = SlotResult(status="failed", reason="slot_lost", detail=f"{lost}; run `evo export` again")
        j.finish_evaluation(eval_id, result, {})
    except BaseException:  # Ctrl-C: nothing of the slot outlives the command
        kill_all_slots()
        raise
    finally:
        pool.shutdown()
    return result


def _header(run: Run, gid: str, chain: list[str], rec, result: SlotResult, out: Path, flagged: str | None) -> str:
    lines = [f"# Exported by evo from {run.path}: genome {gid}" + (f" -- FLAGGED ({flagged})" if flagged else ""),
             f"# {run.integrity_line()}",
             f"# lineage: {' -> '.join(chain)}",
             f"# mean val_bpb {_fmt(rec.mean if rec else None)} over {len(rec.vals) if rec else 0} evaluation(s); "
             f"test_bpb {_fmt(result.test_bpb)} (scored once at export); see {out.stem}.lineage.md",
             f"# Run it with `python {out.name}` (trains and scores it as the run did: {out.stem}{SCORING_SUFFIX} "
             f"names the run's corpus {run.config.data!r} and scoring settings) or "
             f"`evo eval {out.name} --run {run.path}`.", ""]
    return "\n".join(lines)


def export(run_dir: Path, genome_id: str | None = None, out: Path | None = None, allow_flagged: bool = False,
           slots: dict | None = None) -> SlotResult:
    """Score the genome on the test split once, then write its script and lineage.md. `slots`: overrides
    of where that score runs (dask_scheduler, kind), for this command only."""
    run = open_run(run_dir, slots)
    state, _ = RunState.replay(run.config, run.journal)
    j = run.journal
    gid = j.find_genome(genome_id) if genome_id else state.incumbent
    if gid is None:
        raise UserError(f"{run_dir} has no scored genome yet; let the run finish its noise evaluations first")
    rec = state.records.get(gid)
    flagged = rec.flagged if rec else None
    if flagged and not allow_flagged:
        raise UserError(f"genome {gid} is flagged ({flagged}); its scores cannot be trusted. "
                        "Pass --allow-flagged to export it anyway (the export is stamped as flagged)")
    result = _score_on_test(run, gid)
    out = Path(out) if out else Path(run_dir) / "export" / f"{gid}.py"
    out.parent.mkdir(parents=True, exist_ok=True)
    chain = lineage(j, gid)
    out.write_text(_header(run, gid, chain, rec, result, out, flagged) + j.genome(gid).source)
    c = run.config
    out.with_suffix(SCORING_SUFFIX).write_text(json.dumps(
        {"run_dir": str(run_dir), "data": c.data, "tokenizer": c.tokenizer, "dataset": run.dataset,
         "eval_tokens": c.eval_tokens, "eval_seq_len": c.eval_seq_len, "budget_s": c.budget_s}, indent=1))
    lineage_path = out.with_name(f"{out.stem}.lineage.md")
    lineage_path.write_text(lineage_markdown(run, state, chain, result, flagged))
    pictures = write_pictures(run, state, chain, out)
    j.event("export", genome_id=gid, path=str(out), test_bpb=result.test_bpb, status=result.status, flagged=flagged)
    print(f"genome:       {gid}" + (f" (FLAGGED: {flagged})" if flagged else ""))
    print(run.integrity_line())
    print(f"status:       {result.status}" + (f" ({result.reason})" if result.reason else ""))
    for key in ("val_bpb", "heldout_bpb", "test_bpb"):
        print(f"{key + ':':<14}{_fmt(getattr(result, key))}")
    print(f"journal mean: {_fmt(rec.mean if rec else None)} val_bpb over {len(rec.vals) if rec else 0} evaluation(s)")
    print(f"script:       {out}")
    print(f"lineage:      {lineage_path}")
    print(f"pictures:     {', '.join(str(p) for p in pictures) or 'none'}")
    return result
