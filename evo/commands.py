"""The sub-commands, each a few lines over the pieces that do the work:

    run / resume   evo.run (open or create the directory) -> evo.scheduler (the loop)
    status / show  evo.run -> evo.state (replayed from the journal): no operators, no LLM, no slots
    export         evo.export
    eval / prepare gpt.runner / gpt.data, with a run's settings when --run is given
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from evo import config as cfg
from evo.genome import Genome, diff_text
from evo.run import Run, check_writable, create_run, integrity_check, open_run
from evo.state import RunState
from gpt.errors import UserError
from gpt.result import SUMMARY_FIELDS, SlotResult

RUN_SUMMARY = ("evaluations", "seed_mean_val_bpb", "noise_floor", "best_genome", "best_mean_val_bpb", "best_n_evals",
               "flagged", "wall_seconds", "slot_utilization", "stopped")


def print_fields(values: dict, keys, width: int, file=sys.stdout, optional=("reason", "test_bpb", "steps")) -> None:
    """`key: value` lines that a person and grep can both read."""
    for key in keys:
        value = values.get(key)
        if value is None and key in optional:
            continue
        text = f"{value:.6f}" if isinstance(value, float) else ("n/a" if value is None else str(value))
        print(f"{key + ':':<{width}}{text}", file=file)


# ------------------------------------------------------------------ evolving
def find_genome(path: str) -> Path:
    """A seed genome path as given, or, for the shipped genomes (genomes/...), where evo is installed:
    `evo run` works from any directory."""
    given = Path(path)
    if given.is_file():
        return given
    shipped = Path(__file__).resolve().parent.parent / path
    if not given.is_absolute() and shipped.is_file():
        return shipped
    raise UserError(f"seed genome {path} does not exist; give a training script with --genome PATH")


def _config_from_args(args) -> cfg.RunConfig:
    """run.toml < flags, with the --llm flags applied to its [llm] table; API keys checked."""
    from evo.llm_config import LLMConfig

    config = cfg.resolve(cfg.read_toml(args.config) if args.config else {}, cfg.flag_values(args))
    llm = LLMConfig.from_flags(args.llm, args.llm_base_url, args.llm_key_env, base=config.llm,
                               price_in=args.llm_price_in, price_out=args.llm_price_out)
    llm.check_keys()
    return replace(config, llm=llm)


def _session(run: Run, state: RunState, replayed: list, quiet: bool) -> int:
    """Slots, breeder, reporter and scheduler for one session of a run; prints the summary."""
    from evo.breeding import Breeder, slot_facts
    from evo.reporter import Reporter
    from evo.scheduler import EXIT_CODES, Scheduler
    from evo.slots import open_pool

    c = run.config
    sealed = bool((run.journal.get_meta("integrity") or {}).get("sealed"))
    pool = open_pool(c, run.dataset, note=lambda text: print(text, file=sys.stderr, flush=True), sealed=sealed)
    reporter = Reporter(run.path, quiet=quiet, run=run)
    breeder = Breeder(state, run.journal, run.path, n_slots=len(pool.slots), note=reporter.note,
                      slot_facts=slot_facts(run, pool.slots))
    scheduler = Scheduler(run, state, breeder, reporter, pool)
    scheduler.follow_up(replayed)  # re-queue what a crash may have lost
    summary = scheduler.run()
    print("---")
    print_fields({**summary, "run_dir": run.path}, RUN_SUMMARY + ("run_dir",), width=20, optional=())
    return EXIT_CODES.get(summary["stop_kind"], 0)


def cmd_run(args) -> int:
    config = _config_from_args(args)
    seeds = [Genome(source=p.read_text(), operator="seed", rationale=f"seed genome {p}")
             for p in map(find_genome, config.genomes)]
    run_dir = Path(config.out or Path("logs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.preset}")
    if (run_dir / "journal.sqlite").exists():
        raise UserError(f"{run_dir} already holds a run; continue it with `evo resume {run_dir}` or pick --out")
    check_writable(run_dir, "the run directory")  # before the dataset is prepared, which may take long
    from evo.slots import plan_slots
    from gpt.data import prepare

    on_dask = bool(config.dask_scheduler or config.kind)
    slots = [] if on_dask else plan_slots(config.device, config.slots)  # a bad device is refused before the data
    dataset = prepare(config.data, tokenizer=config.tokenizer)
    integrity = integrity_check(dataset, config.sandbox, config.allow_unsealed)
    run = create_run(run_dir, config, seeds, dataset, integrity)
    print(f"run directory: {run_dir}", file=sys.stderr)
    where = f"Dask workers ({config.dask_scheduler or config.kind + ' jobs'})" if on_dask else \
        ", ".join(s.name for s in slots)
    print(f"slots: {where}; budget {config.budget_s:g} s; evaluations "
          f"{config.evals or 'unlimited'}; TensorBoard: tensorboard --logdir {run_dir.parent}", file=sys.stderr)
    return _session(run, RunState(config, run.journal), [], args.quiet)


def cmd_resume(args) -> int:
    given = {"evals": args.evals, "hours": args.hours, "dask_scheduler": args.dask_scheduler}
    overrides = {k: cfg.check_value(k, v) for k, v in given.items() if v is not None}
    run = open_run(args.run_dir, overrides)
    run.journal.event("resumed", requeued=run.journal.requeue_running())
    state, replayed = RunState.replay(run.config, run.journal)
    print(f"resuming {args.run_dir}: {run.journal.count_done()} evaluations done", file=sys.stderr)
    return _session(run, state, replayed, args.quiet)


# ------------------------------------------------------------------ inspecting runs
def cmd_show(args) -> int:
    run = open_run(args.run_dir, readonly=True)
    state = RunState.replay(run.config, run.journal)[0]
    gid = run.journal.find_genome(args.genome_id)
    genome, rec = run.journal.genome(gid), state.records.get(gid)
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
        print(diff_text(run.journal.genome(genome.parents[0]).source, genome.source, genome.parents[0], gid))
    return 0


def cmd_export(args) -> int:
    from evo.export import export

    slots = ({"dask_scheduler": "", "kind": ""} if args.local else
             {"dask_scheduler": cfg.check_value("dask_scheduler", args.dask_scheduler)} if args.dask_scheduler else None)
    export(Path(args.run_dir), args.genome, Path(args.out) if args.out else None, args.allow_flagged, slots)
    return 0


def cmd_config(args) -> int:
    print(cfg.example_toml(), end="")
    return 0


# ------------------------------------------------------------------ one genome through the harness
def cmd_prepare(args) -> int:
    from gpt.data import prepare

    dataset = prepare(args.data, root=Path(args.out) if args.out else None, secret=args.secret,
                      tokenizer=args.tokenizer)
    m = dataset.manifest
    print(f"dataset:   {dataset.path}")
    print(f"source:    {m['source']}")
    for split in ("train", "val", "heldout", "test"):
        print(f"{split + ':':<10} {m['documents'][split]} documents, {m['bytes'][split]} bytes, {m['tokens'][split]} tokens")
    print(f"duplicates removed: {m['duplicates_removed']}")
    return 0


def _eval_job(args, genome: Path, out: Path, device: str):
    """The slot job of `evo eval`: a run's own settings with --run, else the defaults; flags on top."""
    from gpt.data import Dataset, prepare
    from gpt.runner import SlotJob

    threads = (os.cpu_count() or 1) if device == "cpu" else 0
    if args.run:  # score exactly as that run does: its dataset, scoring settings, slot budget and sandbox
        run = open_run(args.run, readonly=True)
        dataset = Dataset(Path(run.dataset))
        job = run.slot_job(genome, out, args.seed, device=device, test=args.test, threads=threads)
        allow_unsealed = run.config.allow_unsealed or args.allow_unsealed
    else:
        dataset = prepare(args.data, tokenizer=args.tokenizer)
        job = SlotJob(genome=str(genome), dataset=str(dataset.path), out_dir=str(out), budget_s=30.0, seed=args.seed,
                      device=device, test=args.test, threads=threads)
        allow_unsealed = args.allow_unsealed
    job = replace(job, **_eval_flags(args))
    return job, dataset, integrity_check(dataset, job.sandbox, allow_unsealed)


def _eval_flags(args) -> dict:
    """--budget, --eval-tokens and --grace as job fields, checked by the config's rules (as `evo run` checks them)."""
    values = {}
    for key, flag, value in (("budget_s", "--budget", args.budget), ("eval_tokens", "--eval-tokens", args.eval_tokens),
                             ("grace_s", "--grace", args.grace)):
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{flag} {value}: {cfg.KEYS[key].section}.{key} must be a finite number")
        try:
            values[key] = cfg.check_value(key, value)
        except UserError as exc:
            raise UserError(f"{flag} {value:g}: {exc}") from None
    return values


def print_result(result: SlotResult, file=sys.stdout) -> None:
    """`evo eval`'s answer: every summary field, but of a failed slot only those that have a value; then
    why it failed or was flagged (the detail, static findings not in it) and, failed, its stderr's tail."""
    values = result.to_dict()
    keys = [k for k in SUMMARY_FIELDS if values.get(k) is not None] if result.failed else SUMMARY_FIELDS
    print_fields(values, keys, width=17, file=file)
    if result.ok:
        return
    if result.detail:
        print("detail:          " + result.detail.strip().replace("\n", "\n" + " " * 17), file=file)
    for f in result.static_findings:
        line = f"line {f.get('line')}: [{f.get('rule')}, {f.get('severity')}] {f.get('message')}"
        if line not in (result.detail or ""):
            print(f"finding:         {line}", file=file)
    if result.failed and result.stderr_tail:
        print("--- stderr (tail)", file=sys.stderr)
        print(result.stderr_tail, file=sys.stderr)


def cmd_eval(args) -> int:
    from gpt.devices import default_device
    from gpt.runner import run_slot

    genome = Path(args.genome)
    if not genome.is_file():
        raise UserError(f"genome {genome} does not exist; pass the path of a training script such as genomes/tiny_cpu.py")
    _eval_flags(args)  # out-of-range flags are refused before a dataset is prepared or a run opened
    out = Path(args.out or Path("logs") / f"eval-{time.strftime('%Y%m%d-%H%M%S')}-{genome.stem}")
    check_writable(out, "the evaluation folder")
    device = args.device or default_device()
    job, dataset, integrity = _eval_job(args, genome, out, device)
    print(f"evaluating {genome} for {job.budget_s:g} s on {device} -> {out}; scoring {job.eval_tokens} tokens per "
          f"split at context {job.eval_seq_len} on {dataset.manifest['source']!r} "
          f"({'sealed' if integrity['sealed'] else 'UNSEALED'})", file=sys.stderr)
    result: SlotResult = run_slot(job)
    print_result(result)
    return 0 if result.status == "ok" else 1


def cmd_cluster(args) -> int:
    """The job script of one [cluster] job, with the settings it came from; nothing is submitted."""
    from evo.cluster import job_script

    config = cfg.resolve(cfg.read_toml(args.config))
    print(job_script(config))
    print(f"# {config.jobs} job(s) like this one; `evo run --config {args.config}` submits them and runs the "
          "scheduler on this machine", file=sys.stderr)
    return 0
