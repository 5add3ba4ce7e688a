"""The `evo` command line. Errors a user can fix are printed without a traceback (exit 2)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from gpt.errors import UserError


SUMMARY_KEYS = ("status", "reason", "val_bpb", "heldout_bpb", "test_bpb", "scored_tokens", "causality", "canary",
                "stateless", "budget", "train_seconds", "slot_seconds", "eval_seconds", "startup_seconds",
                "export_seconds", "cpu_seconds", "steps")
DATA_HELP = "builtin | stdlib | pysource | text:GLOB | parquet:GLOB[:COLUMN] | hf:OWNER/NAME[@REV][:PATTERN[:COLUMN]]"
TOKENIZER_HELP = "byte | bpe:VOCAB (e.g. bpe:8192, trained on the train split only)"


def print_summary(result: dict, keys=SUMMARY_KEYS, file=sys.stdout) -> None:
    """`key: value` lines that a person and grep can both read."""
    for key in keys:
        value = result.get(key)
        if value is None and key in ("reason", "test_bpb", "steps"):
            continue
        text = f"{value:.6f}" if isinstance(value, float) else ("n/a" if value is None else str(value))
        print(f"{key + ':':<17}{text}", file=file)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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


def cmd_eval(args) -> int:
    import os

    from gpt.data import Dataset, prepare
    from gpt.runner import SlotJob, run_slot

    genome = Path(args.genome)
    if not genome.is_file():
        raise UserError(f"genome {genome} does not exist; pass the path of a training script such as genomes/tiny_cpu.py")
    if args.budget is not None and args.budget <= 0:
        raise UserError(f"--budget {args.budget:g}: the training budget must be a positive number of seconds")
    settings = {"budget_s": 30.0, "eval_tokens": 32768, "eval_seq_len": 256, "sandbox": "auto", "grace_s": None,
                "allow_unsealed": args.allow_unsealed}
    if args.run:  # score exactly as that run does: its dataset, its scoring settings, its slot budget and sandbox
        from evo.commands import open_run

        evolution = open_run(args.run)
        c = evolution.config
        dataset = Dataset(Path(evolution.dataset_path))
        settings.update(budget_s=c.budget_s, eval_tokens=c.eval_tokens, eval_seq_len=c.eval_seq_len,
                        sandbox=c.sandbox, grace_s=c.grace_s or None, allow_unsealed=c.allow_unsealed or args.allow_unsealed)
    else:
        dataset = prepare(args.data, tokenizer=args.tokenizer)
    for key, flag in (("budget_s", args.budget), ("eval_tokens", args.eval_tokens), ("grace_s", args.grace)):
        if flag is not None:
            settings[key] = flag
    from evo.commands import integrity_check

    integrity = integrity_check(dataset, settings["sandbox"], settings["allow_unsealed"])
    out = Path(args.out or Path("logs") / f"eval-{time.strftime('%Y%m%d-%H%M%S')}-{genome.stem}")
    device = args.device or default_device()
    print(f"evaluating {genome} for {settings['budget_s']:g} s on {device} -> {out}; scoring "
          f"{settings['eval_tokens']} tokens per split at context {settings['eval_seq_len']} on "
          f"{dataset.manifest['source']!r} ({'sealed' if integrity['sealed'] else 'UNSEALED'})", file=sys.stderr)
    result = run_slot(SlotJob(genome=str(genome), dataset=str(dataset.path), out_dir=str(out),
                              budget_s=settings["budget_s"], seed=args.seed, device=device, test=args.test,
                              grace_s=settings["grace_s"], eval_tokens=settings["eval_tokens"],
                              eval_seq_len=settings["eval_seq_len"], sandbox=settings["sandbox"],
                              threads=(os.cpu_count() or 1) if device == "cpu" else 0))
    print_summary(result)
    if result["status"] != "ok" and result.get("detail"):
        print(f"detail:          {result['detail']}")
    if result["status"] == "failed" and result.get("stderr_tail"):
        print("--- stderr (tail)", file=sys.stderr)
        print(result["stderr_tail"], file=sys.stderr)
    return 0 if result["status"] == "ok" else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evo", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="prepare a dataset (splits, canaries, token memmaps)")
    p.add_argument("--data", default="builtin", help=DATA_HELP + " (default: builtin)")
    p.add_argument("--tokenizer", default="byte", help=TOKENIZER_HELP)
    p.add_argument("--out", help="dataset root folder (default: $EVO_DATA_DIR or ~/.cache/evo/data)")
    p.add_argument("--secret", help="dataset secret, hex (e.g. 32 hex digits): fixes the splits and canaries, for a "
                                    "reproducible dataset (default: a random one, kept in the manifest)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("eval", help="train and score one genome through the harness")
    p.add_argument("genome")
    p.add_argument("--budget", type=float, help="training budget in seconds (default 30, or the run's)")
    p.add_argument("--run", help="score exactly as this run directory does (its dataset, eval tokens, context, "
                                 "budget and sandbox)")
    p.add_argument("--eval-tokens", type=int, help="tokens scored per eval split (default 32768, or the run's)")
    p.add_argument("--allow-unsealed", action="store_true", help="score even if the eval data is not sealed "
                                                                 "from the genome at this sandbox level")
    p.add_argument("--data", default="builtin", help=DATA_HELP)
    p.add_argument("--tokenizer", default="byte", help=TOKENIZER_HELP)
    p.add_argument("--out", help="evaluation folder (default: logs/eval-<time>-<genome>)")
    p.add_argument("--seed", type=int, default=0, help="harness seed for this slot")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--test", action="store_true", help="also score the test split (for exports only)")
    p.add_argument("--grace", type=float, help="seconds past the budget before the hard kill "
                                               "(default max(20, 20%% of the budget))")
    p.set_defaults(func=cmd_eval)

    from evo import commands

    commands.add_run_commands(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
