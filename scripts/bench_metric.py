"""Benchmark the clean metric and the sandboxed scorer, side by side in one run.

For the built-in corpus and a small prose corpus (the common licenses every Debian machine has,
cut into ~2 KB documents), it reports:
- honest `genomes/tiny_cpu.py` val_bpb at a 20 s budget (median of --repeats slots, bwrap);
- the canary share of the scored tokens (scored positions that fall inside a canary span: must be 0);
- a count-based trigram fitted on train, plain and hedged (1% uniform mixed in), on val_bpb and on
  the raw val stream with canaries left in (the old metric);
- what the probes cost: seconds per batch kind when one artifact is scored;
- what sandboxing the scorer costs: one artifact scored through the runner's Scorer at level bwrap
  and at level none, alternately, --repeats times each (medians).

Usage: python scripts/bench_metric.py [--repeats 3] [--budget 20]; prints markdown for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from gpt import score as S  # noqa: E402
from gpt.data import prepare  # noqa: E402
from gpt.runner import Scorer, SlotJob, run_slot  # noqa: E402


def prose_corpus(folder: Path) -> str:
    texts, seen = [], set()
    for path in sorted(Path("/usr/share/common-licenses").glob("*")):
        text = path.read_text() if path.is_file() else ""
        if text in seen:
            continue
        seen.add(text)
        piece = []
        for para in text.split("\n\n"):
            piece.append(para)
            if sum(map(len, piece)) > 2000:
                texts.append("\n\n".join(piece))
                piece = []
    folder.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(texts):
        (folder / f"doc_{i:04d}.txt").write_text(t)
    return f"text:{folder}/*.txt"


def canary_share(dataset, seq_len: int, n_tokens: int) -> float:
    """Scored val positions inside canary spans, over all scored positions (positions in the file)."""
    tokens, spans = len(dataset.tokens("val")), dataset.canary_spans("val")
    keep = np.ones(tokens, bool)
    for a, b, _ in spans:
        keep[a:b] = False
    file_pos = np.flatnonzero(keep)  # text_tokens index -> file position
    n = min(max(n_tokens // seq_len, 1), (len(file_pos) - 1) // seq_len) * seq_len
    scored = file_pos[1:n + 1]
    return float((~keep[scored]).mean())


def hedged_rows(dataset, tmp: Path) -> dict:
    from test_score import Hedged, Trigram, VOCAB, score_model  # the same models the tests use

    model = Trigram.fit(dataset.tokens("train"))
    out = {}
    for name, m in (("plain", model), ("hedged", Hedged(model))):
        out[name] = score_model(m, dataset, tmp / name).val_bpb
        out[name + "_raw"] = S.bits_per_byte(m.eval(), np.asarray(dataset.tokens("val")), np.ones(VOCAB, np.int64),
                                             S.DEFAULT_EVAL_TOKENS // 128, 10**9, VOCAB, "cpu")
    return out


def probe_cost(artifact_dir: Path, dataset, seq_len: int, n_tokens: int) -> dict:
    from gpt import artifact

    _, fn = artifact.load(artifact_dir)
    work = S.plan(dataset, ["val", "heldout"], seq_len, n_tokens, probe_seed=1)
    seconds: dict = {}
    with S._fresh_memory():
        for kind, split, index, rows, targets in work.batches:
            t = time.perf_counter()
            S._target_nll(fn, rows, dataset.tokenizer.vocab_size, "cpu", targets)
            seconds[kind] = seconds.get(kind, 0.0) + time.perf_counter() - t
    return seconds


def scorer_round_trip(level: str, artifact_dir: Path, dataset, tmp: Path, k: int) -> float:
    """Start the runner's Scorer at `level`, wait as a slot would, send one request: wall from request to answer,
    and from start to answer (the part a slot waits for is the former: the scorer starts with the genome)."""
    job = SlotJob(genome="unused.py", dataset=str(dataset.path), out_dir=str(tmp), budget_s=1, sandbox=level,
                  threads=os.cpu_count() or 1)
    out = tmp / f"scorer-{level}-{k}"
    out.mkdir(parents=True)
    start = time.monotonic()
    scorer = Scorer(job, out, level, artifact_dir)
    time.sleep(6.0)  # the genome's training: the scorer imports torch meanwhile
    sent = time.monotonic()
    result = scorer.score({"artifact": str(artifact_dir), "dataset": str(dataset.path), "seq_len": 256,
                           "eval_tokens": S.DEFAULT_EVAL_TOKENS, "device": "cpu", "threads": os.cpu_count(),
                           "probe_seed": k})
    scorer.close()
    assert result.status == "ok", result
    return time.monotonic() - sent, time.monotonic() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget", type=float, default=20.0)
    args = ap.parse_args()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}, torch {torch.__version__}", file=sys.stderr)
    genome = str(Path(__file__).resolve().parents[1] / "genomes" / "tiny_cpu.py")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpora = {"builtin (default)": prepare("builtin"), "common licenses (prose)": prepare(prose_corpus(tmp / "prose"))}
        print("| corpus | tiny_cpu val_bpb at 20 s (median) | runs | scored val tokens | canary share of scored "
              "tokens | trigram val_bpb plain / hedged | raw stream with canaries plain / hedged |")
        print("|---|---|---|---|---|---|---|")
        artifacts = {}
        for name, ds in corpora.items():
            runs = []
            for k in range(args.repeats):
                r = run_slot(SlotJob(genome=genome, dataset=str(ds.path), out_dir=str(tmp / f"{name[:4]}-{k}"),
                                     budget_s=args.budget, seed=k, threads=os.cpu_count() or 1, sandbox="bwrap"))
                runs.append(r)
                print(f"{name} seed {k}: {r.status} {r.reason} val {r.val_bpb}", file=sys.stderr)
            artifacts[name] = tmp / f"{name[:4]}-0" / "work"
            vals = [r.val_bpb for r in runs if r.val_bpb is not None]
            h = hedged_rows(ds, tmp / f"hedge-{name[:4]}")
            print(f"| {name} | {statistics.median(vals):.3f} | {', '.join(f'{v:.3f}' for v in vals)} | "
                  f"{runs[0].scored_tokens} | {canary_share(ds, 256, S.DEFAULT_EVAL_TOKENS):.4f} | "
                  f"{h['plain']:.4f} / {h['hedged']:.4f} | {h['plain_raw']:.4f} / {h['hedged_raw']:.4f} |")
        ds = corpora["builtin (default)"]
        cost = probe_cost(artifacts["builtin (default)"], ds, 256, S.DEFAULT_EVAL_TOKENS)
        total = sum(cost.values())
        print("\n| batch kind | seconds | share of scoring time |\n|---|---|---|")
        for kind, sec in sorted(cost.items(), key=lambda kv: -kv[1]):
            print(f"| {kind} | {sec:.3f} | {100 * sec / total:.1f}% |")
        times = {"bwrap": [], "none": []}
        for k in range(args.repeats):
            for level in ("bwrap", "none"):
                times[level].append(scorer_round_trip(level, artifacts["builtin (default)"], ds, tmp, k))
        print("\n| scorer level | request to answer s (median) | start to answer s (median) |\n|---|---|---|")
        for level, pairs in times.items():
            print(f"| {level} | {statistics.median(p[0] for p in pairs):.3f} | "
                  f"{statistics.median(p[1] for p in pairs):.3f} |")


if __name__ == "__main__":
    main()
