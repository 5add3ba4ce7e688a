"""`evo export`: a genome as a standalone script, its lineage from the seed, and one test-split score.

The test split is never used in selection; export is the only place it is scored, once
per export, with a fresh harness seed, and the score is journaled.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path

from evo.commands import integrity_line, open_run
from evo.evolve import harness_seed
from evo.slots import plan_slots
from gpt.errors import UserError
from gpt.runner import SCORING_SUFFIX, run_slot


def lineage(journal, genome_id: str) -> list[str]:
    """Genome ids from the seed to `genome_id`, following each child's first parent."""
    chain = [genome_id]
    while journal.genome(chain[-1]).parents:
        chain.append(journal.genome(chain[-1]).parents[0])
    return chain[::-1]


def _diff_summary(parent: str, child: str) -> tuple[str, str]:
    diff = list(difflib.unified_diff(parent.splitlines(), child.splitlines(), lineterm="", n=0))
    added = [line[1:].strip() for line in diff if line.startswith("+") and not line.startswith("+++")]
    removed = [line for line in diff if line.startswith("-") and not line.startswith("---")]
    summary = f"+{len(added)} -{len(removed)} lines"
    return summary, "\n".join(diff[2:])


def lineage_markdown(evo, chain: list[str], test_result: dict, flagged: str | None) -> str:
    j = evo.journal
    lines = [f"# Lineage of {chain[-1]}", ""]
    if flagged:
        lines += [f"**FLAGGED: {flagged}.** Exported with --allow-flagged; its scores cannot be trusted.", ""]
    floor = f"{evo.floor:.4f} bpb" if evo.floor is not None else "not measured yet"  # export during the noise evals
    lines += [integrity_line(j) + ".", ""]
    lines += [f"Run: `{evo.run_dir}`. Noise floor: {floor}. "
              f"Test split (scored once, at export): {_fmt(test_result.get('test_bpb'))} bpb "
              f"(status {test_result.get('status')}).", ""]
    for depth, gid in enumerate(chain):
        genome, rec = j.genome(gid), evo.records.get(gid)
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


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def export(run_dir: Path, genome_id: str | None = None, out: Path | None = None, allow_flagged: bool = False) -> dict:
    """Score the genome on the test split once, then write its script and lineage.md."""
    evo = open_run(run_dir)
    j = evo.journal
    gid = j.find_genome(genome_id) if genome_id else evo.incumbent
    if gid is None:
        raise UserError(f"{run_dir} has no scored genome yet; let the run finish its noise evaluations first")
    rec = evo.records.get(gid)
    flagged = rec.flagged if rec else None
    if flagged and not allow_flagged:
        raise UserError(f"genome {gid} is flagged ({flagged}); its scores cannot be trusted. "
                        "Pass --allow-flagged to export it anyway (the export is stamped as flagged)")
    slot = plan_slots(evo.config.device, 1)[0]
    eval_id = j.queue_evaluation(gid, "export", harness_seed(evo.config.seed, gid, j.count("genome_id = ?", (gid,))))
    attempt = j.mark_running(eval_id, "export")
    row = j.evaluations("id = ?", (eval_id,))[0]
    job = dataclasses.replace(evo.slot_job(row, attempt), test=True, device=slot.device, threads=slot.threads,
                              env=slot.env)
    print(f"scoring {gid} once on the test split ({evo.config.budget_s:g} s of training)...")
    result = run_slot(job)
    j.finish_evaluation(eval_id, result, {})

    out = Path(out) if out else Path(run_dir) / "export" / f"{gid}.py"
    out.parent.mkdir(parents=True, exist_ok=True)
    chain = lineage(j, gid)
    data = evo.config.data
    header = [f"# Exported by evo from {run_dir}: genome {gid}" + (f" -- FLAGGED ({flagged})" if flagged else ""),
              f"# {integrity_line(j)}",
              f"# lineage: {' -> '.join(chain)}",
              f"# mean val_bpb {_fmt(rec.mean if rec else None)} over {len(rec.vals) if rec else 0} evaluation(s); "
              f"test_bpb {_fmt(result.get('test_bpb'))} (scored once at export); see {out.stem}.lineage.md",
              f"# Run it with `python {out.name}` (trains and scores it as the run did: {out.stem}{SCORING_SUFFIX} "
              f"names the run's corpus {data!r} and scoring settings) or `evo eval {out.name} --run {run_dir}`.", ""]
    out.write_text("\n".join(header) + j.genome(gid).source)
    c = evo.config
    out.with_suffix(SCORING_SUFFIX).write_text(json.dumps(
        {"run_dir": str(run_dir), "data": c.data, "tokenizer": c.tokenizer, "dataset": evo.dataset_path,
         "eval_tokens": c.eval_tokens, "eval_seq_len": c.eval_seq_len, "budget_s": c.budget_s}, indent=1))
    lineage_path = out.with_name(f"{out.stem}.lineage.md")
    lineage_path.write_text(lineage_markdown(evo, chain, result, flagged))
    j.event("export", genome_id=gid, path=str(out), test_bpb=result.get("test_bpb"), status=result.get("status"),
            flagged=flagged)
    print(f"genome:       {gid}" + (f" (FLAGGED: {flagged})" if flagged else ""))
    print(integrity_line(j))
    print(f"status:       {result.get('status')}" + (f" ({result.get('reason')})" if result.get("reason") else ""))
    for key in ("val_bpb", "heldout_bpb", "test_bpb"):
        print(f"{key + ':':<14}{_fmt(result.get(key))}")
    print(f"journal mean: {_fmt(rec.mean if rec else None)} val_bpb over {len(rec.vals) if rec else 0} evaluation(s)")
    print(f"script:       {out}")
    print(f"lineage:      {lineage_path}")
    return result
