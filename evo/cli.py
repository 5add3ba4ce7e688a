"""The `evo` command line: the parser and the one place errors are caught. Errors a user can fix
are printed without a traceback (exit 2; `--debug` shows it); the commands live in evo.commands."""
from __future__ import annotations

import argparse
import sys

from gpt.errors import UserError

TOKENIZER_HELP = "byte | bpe:VOCAB (e.g. bpe:8192, trained on the train split only)"


def _source_help() -> str:
    from gpt.sources import SOURCE_GRAMMAR  # the one grammar of data sources

    return SOURCE_GRAMMAR


def _add_harness_commands(sub, commands) -> None:
    p = sub.add_parser("prepare", help="prepare a dataset (splits, canaries, token memmaps)")
    p.add_argument("--data", default="builtin", help=_source_help() + " (default: builtin)")
    p.add_argument("--tokenizer", default="byte", help=TOKENIZER_HELP)
    p.add_argument("--out", help="dataset root folder (default: $EVO_DATA_DIR or ~/.cache/evo/data)")
    p.add_argument("--secret", help="dataset secret, hex (e.g. 32 hex digits): fixes the splits and canaries, for a "
                                    "reproducible dataset (default: a random one, kept in the manifest)")
    p.set_defaults(func=commands.cmd_prepare)

    p = sub.add_parser("eval", help="train and score one genome through the harness")
    p.add_argument("genome")
    p.add_argument("--budget", type=float, help="training budget in seconds (default 30, or the run's)")
    p.add_argument("--run", help="score exactly as this run directory does (its dataset, eval tokens, context, "
                                 "budget and sandbox)")
    p.add_argument("--eval-tokens", type=int, help="tokens scored per eval split (default 32768, or the run's)")
    p.add_argument("--allow-unsealed", action="store_true", help="score even if the eval data is not sealed "
                                                                 "from the genome at this sandbox level")
    p.add_argument("--data", default="builtin", help=_source_help())
    p.add_argument("--tokenizer", default="byte", help=TOKENIZER_HELP)
    p.add_argument("--out", help="evaluation folder (default: logs/eval-<time>-<genome>)")
    p.add_argument("--seed", type=int, default=0, help="harness seed for this slot")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--test", action="store_true", help="also score the test split (for exports only)")
    p.add_argument("--grace", type=float, help="seconds past the budget before the hard kill "
                                               "(default max(20, 20%% of the budget))")
    p.set_defaults(func=commands.cmd_eval)


def _add_run_commands(sub, commands) -> None:
    from evo import config as cfg
    from evo import status

    p = sub.add_parser("run", help="evolve a population of training scripts")
    p.add_argument("--config", help="run.toml (see examples/run.toml)")
    cfg.add_flags(p)  # one flag per config key that declares one (evo.config.RunConfig)
    p.add_argument("--llm", help="add an LLM model for the LLM operators (e.g. gpt-4.1-mini)")
    p.add_argument("--llm-base-url", help="OpenAI-compatible base URL (default https://api.openai.com/v1)")
    p.add_argument("--llm-key-env", help="environment variable holding the API key (default OPENAI_API_KEY)")
    p.add_argument("--llm-price-in", type=float, metavar="USD", help="the --llm model's price per million prompt "
                   "tokens (default 0: costs read $0 and llm.budget_usd cannot stop it; a warning says so)")
    p.add_argument("--llm-price-out", type=float, metavar="USD", help="the --llm model's price per million "
                   "completion tokens (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=commands.cmd_run)

    p = sub.add_parser("resume", help="continue a run from its journal")
    p.add_argument("run_dir")
    p.add_argument("--evals", type=int, help="new evaluation limit (total)")
    p.add_argument("--hours", type=float, help="new time limit for this session")
    p.add_argument("--dask-scheduler", help="continue on the Dask scheduler at this address (e.g. a new one "
                                            "after the old one went away)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=commands.cmd_resume)

    p = sub.add_parser("status", help="the best genomes, each with its state, and the run's progress")
    p.add_argument("run_dir")
    p.add_argument("--top", type=int, default=15, help="genomes in the table (0: all; default 15)")
    p.add_argument("--json", action="store_true", help="one JSON object for scripts (keys: see evo/status.py)")
    p.add_argument("--watch", nargs="?", type=float, const=status.DEFAULT_WATCH_SECONDS, metavar="SECONDS",
                   help="redraw every SECONDS (default 5) until Ctrl-C; only reads the run, so it can watch one "
                        "another process drives (put it after RUN_DIR)")
    p.set_defaults(func=status.cmd_status)

    p = sub.add_parser("show", help="one genome's metrics and its diff against its parent")
    p.add_argument("run_dir")
    p.add_argument("genome_id")
    p.set_defaults(func=commands.cmd_show)

    p = sub.add_parser("export", help="write a genome as a standalone script with its lineage and a test score")
    p.add_argument("run_dir")
    p.add_argument("--genome", help="genome id (default: the best)")
    p.add_argument("--out", help="output script path (default RUN_DIR/export/<id>.py)")
    p.add_argument("--allow-flagged", action="store_true", help="export a flagged genome (stamped as flagged)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--dask-scheduler", help="score it on a worker of the Dask scheduler at this address (default: "
                       "the run's own slots, a Dask worker when the run used them)")
    where.add_argument("--local", action="store_true", help="score it on this machine even if the run used Dask")
    p.set_defaults(func=commands.cmd_export)

    p = sub.add_parser("config", help="print the documented example run.toml")
    p.set_defaults(func=commands.cmd_config)

    p = sub.add_parser("cluster", help="show the batch job script [cluster] would submit (dask-jobqueue)")
    p.add_argument("--config", required=True, help="run.toml with a [cluster] table")
    p.add_argument("--dry-run", action="store_true", help="print the job script, submit nothing (the default; "
                                                          "`evo run` submits the jobs)")
    p.set_defaults(func=commands.cmd_cluster)


def build_parser() -> argparse.ArgumentParser:
    from evo import commands

    parser = argparse.ArgumentParser(prog="evo", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_harness_commands(sub, commands)
    _add_run_commands(sub, commands)
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
