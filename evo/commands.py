"""Sub-commands that drive evolution runs: run, resume, status, show, export, config."""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from evo import config as cfg
from evo.genome import Genome, diff_text
from evo.journal import Journal
from gpt.errors import UserError

JOURNAL_NAME = "journal.sqlite"


# ------------------------------------------------------------------ opening runs
def open_run(run_dir: str | Path, resume: bool = False, overrides: dict | None = None, quiet: bool = True):
    """Load a run's config and journal and replay its state. With `resume`, evaluations that were
    running when the controller died are re-queued and lost follow-ups are repaired."""
    from evo.evolve import Evolution

    run_dir = Path(run_dir)
    if not (run_dir / JOURNAL_NAME).exists():
        raise UserError(f"{run_dir} is not a run directory (no {JOURNAL_NAME}); `evo run` creates one")
    journal = Journal(run_dir / JOURNAL_NAME)
    saved = journal.get_meta("config")
    if saved is None:
        raise UserError(f"{run_dir} holds a journal but no run (it was killed while being created); "
                        "delete it and start again with `evo run`")
    known = {f.name for f in dataclasses.fields(cfg.RunConfig)}
    config = cfg.RunConfig(**{**{k: v for k, v in saved.items() if k in known}, "genomes": tuple(saved["genomes"]),
                              **(overrides or {})})
    if resume:
        journal.event("resumed", requeued=journal.requeue_running())
    evolution = Evolution(run_dir, config, journal, journal.get_meta("dataset"), quiet=quiet, operators=resume)
    evolution.replay(repair=resume)
    return evolution


def _overrides(args) -> dict:
    return {"preset": args.preset, "out": args.out, "evals": args.evals, "hours": args.hours,
            "budget_s": args.budget, "slots": args.slots, "genomes": tuple(args.genome) if args.genome else None,
            "data": args.data, "tokenizer": args.tokenizer, "seed": args.seed,
            "allow_unsealed": True if args.allow_unsealed else None}


def _llm_settings(config: cfg.RunConfig, args) -> dict:
    """The [llm] table plus --llm flags, validated (keys present) before anything is written."""
    if not config.llm and not getattr(args, "llm", None):
        if getattr(args, "llm_base_url", None) or getattr(args, "llm_key_env", None):
            raise UserError("--llm-base-url and --llm-key-env describe the model given with --llm MODEL; pass --llm too")
        return {}
    from evo.breeding import llm_settings_to_store
    from evo.llm.config import LLMConfig

    base_dir = Path(args.config).resolve().parent if args.config else None
    llm = LLMConfig.from_flags(args.llm, args.llm_base_url, args.llm_key_env,
                               base=LLMConfig.from_dict(config.llm, base_dir=base_dir))
    llm.check_keys()
    return llm_settings_to_store(llm)


def _find_genome(path: str) -> Path:
    """A seed genome path as given, or, for the shipped genomes (genomes/...), where evo is installed:
    `evo run` works from any directory."""
    given = Path(path)
    if given.is_file():
        return given
    shipped = Path(__file__).resolve().parent.parent / path
    if not given.is_absolute() and shipped.is_file():
        return shipped
    raise UserError(f"seed genome {path} does not exist; give a training script with --genome PATH")


def cmd_run(args) -> int:
    config = cfg.resolve(cfg.read_toml(args.config) if args.config else {}, _overrides(args))
    config = dataclasses.replace(config, llm=_llm_settings(config, args))
    seeds = []
    for path in config.genomes:
        path = _find_genome(path)
        seeds.append(Genome(source=path.read_text(), operator="seed", rationale=f"seed genome {path}"))
    run_dir = Path(config.out or Path("logs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.preset}")
    if (run_dir / JOURNAL_NAME).exists():
        raise UserError(f"{run_dir} already holds a run; continue it with `evo resume {run_dir}` or pick --out")

    # the config is valid: now the heavy imports, the slots and the dataset
    from evo.evolve import Evolution, harness_seed
    from evo.slots import SlotPool
    from gpt.data import prepare

    pool = SlotPool.create(config.device, config.slots, config.dask_scheduler)
    dataset = prepare(config.data, tokenizer=config.tokenizer)
    integrity = integrity_check(dataset, config.sandbox, config.allow_unsealed)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.toml").write_text(config.to_toml())
    journal = Journal(run_dir / JOURNAL_NAME)
    journal.start_run({"config": dataclasses.asdict(config), "dataset": str(dataset.path),
                       "seeds": [g.id for g in seeds], "integrity": integrity},
                      [(g, [harness_seed(config.seed, g.id, k) for k in range(config.noise_repeats)]) for g in seeds])
    journal.event("integrity", **integrity)
    print(f"run directory: {run_dir}", file=sys.stderr)
    print(f"slots: {', '.join(s.name for s in pool.slots)}; budget {config.budget_s:g} s; "
          f"evaluations {config.evals or 'unlimited'}; TensorBoard: tensorboard --logdir {run_dir.parent}", file=sys.stderr)
    evolution = Evolution(run_dir, config, journal, str(dataset.path), quiet=args.quiet)
    return _finish(evolution.run(pool), run_dir)


def cmd_resume(args) -> int:
    from evo.slots import SlotPool

    overrides = {k: cfg.check_value(k, v) for k, v in {"evals": args.evals, "hours": args.hours}.items()
                 if v is not None}
    evolution = open_run(args.run_dir, resume=True, overrides=overrides, quiet=args.quiet)
    done = evolution.journal.count("state = 'done' AND purpose != 'export'")
    print(f"resuming {args.run_dir}: {done} evaluations done", file=sys.stderr)
    config = evolution.config
    pool = SlotPool.create(config.device, config.slots, config.dask_scheduler)
    return _finish(evolution.run(pool), Path(args.run_dir))


def _finish(summary: dict, run_dir: Path) -> int:
    print("---")
    for key in ("evaluations", "seed_mean_val_bpb", "noise_floor", "best_genome", "best_mean_val_bpb",
                "best_n_evals", "flagged", "wall_seconds", "slot_utilization", "stopped"):
        value = summary.get(key)
        print(f"{key + ':':<20}{value:.4f}" if isinstance(value, float) else f"{key + ':':<20}{value}")
    print(f"{'run_dir:':<20}{run_dir}")
    return 130 if str(summary.get("stopped", "")).startswith("interrupted") else 0


def integrity_check(dataset, sandbox_level: str, allow_unsealed: bool) -> dict:
    """The sandbox level this run gets and whether its eval splits are sealed from genomes. An unsealed
    source is refused unless the user opted in; every weakness is printed (and journaled by the caller)."""
    from gpt.sandbox import resolve_level
    from gpt.sealing import seal, unprotected

    level = resolve_level(sandbox_level)
    verdict = seal(dataset, level)
    if not verdict.sealed and not allow_unsealed:
        raise UserError(f"the eval splits of {dataset.manifest['source']!r} cannot be sealed from genomes: "
                        f"{verdict.why}. Or pass --allow-unsealed (allow_unsealed = true) to run anyway; the run is "
                        "then stamped unsealed")
    gaps = unprotected(level)
    for gap in gaps:
        print(f"warning: sandbox level {level!r} does not give {gap}", file=sys.stderr)
    if not verdict.sealed:
        print(f"warning: this run is UNSEALED: {verdict.why}", file=sys.stderr)
    return {"sandbox": level, "sealed": verdict.sealed, "unsealed_why": verdict.why or None, "unprotected": gaps}


def integrity_line(journal) -> str:
    """One line for status and export: the sandbox level and whether the eval data was sealed."""
    from gpt.sealing import describe

    return describe(journal.get_meta("integrity"))


# ------------------------------------------------------------------ inspecting runs
def cmd_status(args) -> int:
    from rich.console import Console
    from rich.table import Table

    evo = open_run(args.run_dir)
    j = evo.journal
    console = Console(width=None if sys.stdout.isatty() else 160)
    table = Table(title=f"{args.run_dir}: best genomes")
    for col in ("id", "fitness", "mean val_bpb", "evals", "held-out answer", "flags", "operator", "parent"):
        table.add_column(col, no_wrap=col in ("id", "parent", "operator"))
    ranked = sorted(evo.records.items(), key=lambda kv: kv[1].fitness, reverse=True)
    for gid, rec in ranked[: args.top]:
        genome = j.genome(gid)
        flags = rec.flagged or rec.failed or ""
        if gid == evo.incumbent:
            flags = ("best " + flags).strip()
        table.add_row(gid, f"{rec.fitness:.4f}", f"{rec.mean:.4f}" if rec.mean is not None else "-", str(len(rec.vals)),
                      f"{rec.answer:.4f}" if rec.answer is not None else "-", flags, genome.operator,
                      genome.parents[0] if genome.parents else "-")
    console.print(table)
    counts = {state: j.count("state = ? AND purpose != 'export'", (state,)) for state in ("done", "running", "queued")}
    limit = evo.config.evals or "unlimited"
    console.print(f"evaluations: {counts['done']} done of {limit}, {counts['running']} running, {counts['queued']} queued")
    if evo.floor is not None:
        seed = evo.records[evo.seed_ids[0]]
        best = evo.records[evo.incumbent]
        console.print(f"noise floor: {evo.floor:.4f} bpb; seed mean {seed.mean:.4f}; best {evo.incumbent} "
                      f"{best.mean:.4f} ({seed.mean - best.mean:+.4f} over seed)")
        console.print(f"Thresholdout: {evo.thresholdout.state.spent} of {evo.thresholdout.state.budget} reveals spent")
    console.print(integrity_line(j), style=None if (j.get_meta("integrity") or {}).get("sealed") else "yellow")
    sandboxes = sorted({r["sandbox"] for r in j.evaluations("sandbox IS NOT NULL")})
    if sandboxes:
        weak = [s for s in sandboxes if s != "bwrap"]
        console.print(f"sandbox used by evaluations: {', '.join(sandboxes)}"
                      + (" (warning: weaker than bwrap)" if weak else ""))
    flagged = [(gid, rec.flagged) for gid, rec in evo.records.items() if rec.flagged]
    for gid, reason in flagged:
        console.print(f"flagged: {gid}: {reason}", style="red")
    llm = j.llm_totals()
    if llm["calls"]:
        console.print(f"LLM: {llm['calls']} calls, {llm['prompt_tokens']} prompt + {llm['completion_tokens']} "
                      f"completion tokens, ${llm['cost_usd']:.4f}")
    return 0


def cmd_show(args) -> int:
    evo = open_run(args.run_dir)
    gid = evo.journal.find_genome(args.genome_id)
    genome, rec = evo.journal.genome(gid), evo.records.get(gid)
    print(f"genome:    {gid}")
    print(f"operator:  {genome.operator}")
    print(f"rationale: {genome.rationale}")
    print(f"parents:   {', '.join(genome.parents) or '-'}")
    if rec:
        print(f"fitness:   {rec.fitness:.4f}")
        print(f"val_bpb:   {', '.join(f'{v:.4f}' for v in rec.vals) or '-'}"
              + (f" (mean {rec.mean:.4f})" if rec.vals else ""))
        print(f"flags:     {rec.flagged or rec.failed or '-'}")
    if genome.parents:
        print(diff_text(evo.journal.genome(genome.parents[0]).source, genome.source, genome.parents[0], gid))
    return 0


def cmd_export(args) -> int:
    from evo.export import export

    export(Path(args.run_dir), args.genome, Path(args.out) if args.out else None, args.allow_flagged)
    return 0


def cmd_config(args) -> int:
    print(cfg.example_toml(), end="")
    return 0


# ------------------------------------------------------------------ argparse
def add_run_commands(sub) -> None:
    p = sub.add_parser("run", help="evolve a population of training scripts")
    p.add_argument("--config", help="run.toml (see examples/run.toml)")
    p.add_argument("--preset", help=f"one of {', '.join(cfg.PRESETS)} (default cpu-demo)")
    p.add_argument("--out", help="run directory (default logs/<timestamp>-<preset>)")
    p.add_argument("--evals", type=int, help="stop after this many evaluations")
    p.add_argument("--hours", type=float, help="stop starting slots after this many hours")
    p.add_argument("--budget", type=float, help="training budget of one slot, seconds")
    p.add_argument("--slots", type=int, help="parallel slots")
    p.add_argument("--genome", action="append", help="seed genome path (repeatable)")
    p.add_argument("--data", help="builtin | text:GLOB | parquet:GLOB[:COLUMN] | hf:NAME (stdlib | pysource: never sealed)")
    p.add_argument("--allow-unsealed", action="store_true",
                   help="run even if genomes could read eval documents at this sandbox level (stamped unsealed)")
    p.add_argument("--tokenizer", help="byte | bpe:VOCAB")
    p.add_argument("--seed", type=int, help="run seed")
    p.add_argument("--llm", help="add an LLM model for the LLM operators (e.g. gpt-4.1-mini)")
    p.add_argument("--llm-base-url", help="OpenAI-compatible base URL (default https://api.openai.com/v1)")
    p.add_argument("--llm-key-env", help="environment variable holding the API key (default OPENAI_API_KEY)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("resume", help="continue a run from its journal")
    p.add_argument("run_dir")
    p.add_argument("--evals", type=int, help="new evaluation limit (total)")
    p.add_argument("--hours", type=float, help="new time limit for this session")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("status", help="the best genomes and the run's progress")
    p.add_argument("run_dir")
    p.add_argument("--top", type=int, default=15)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("show", help="one genome's metrics and its diff against its parent")
    p.add_argument("run_dir")
    p.add_argument("genome_id")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("export", help="write a genome as a standalone script with its lineage and a test score")
    p.add_argument("run_dir")
    p.add_argument("--genome", help="genome id (default: the best)")
    p.add_argument("--out", help="output script path (default RUN_DIR/export/<id>.py)")
    p.add_argument("--allow-flagged", action="store_true", help="export a flagged genome (stamped as flagged)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("config", help="print the documented example run.toml")
    p.set_defaults(func=cmd_config)
