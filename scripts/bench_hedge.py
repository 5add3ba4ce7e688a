"""Hedging against the clean metric: an honest tiny_cpu model, and the same model with EPS of uniform
probability mixed into its output, scored by the scorer (documents only) and on the raw val stream with
the planted canaries left in (the metric before the fix).

Usage: python scripts/bench_hedge.py [--budget 20] [--data builtin]; prints one line per EPS.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gpt import artifact, score as S  # noqa: E402
from gpt.data import prepare  # noqa: E402
from gpt.runner import SlotJob, run_slot  # noqa: E402


class Hedged(nn.Module):
    def __init__(self, model, eps):
        super().__init__()
        self.model, self.eps = model, eps

    def forward(self, idx):
        p = torch.softmax(self.model(idx).float(), -1)
        return torch.log((1 - self.eps) * p + self.eps / p.shape[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=20.0)
    ap.add_argument("--data", default="builtin")
    args = ap.parse_args()
    ds = prepare(args.data)
    tmp = Path(tempfile.mkdtemp())
    genome = Path(__file__).resolve().parents[1] / "genomes" / "tiny_cpu.py"
    r = run_slot(SlotJob(genome=str(genome), dataset=str(ds.path), out_dir=str(tmp / "slot"), budget_s=args.budget,
                         seed=0, threads=2, sandbox="auto"))
    _, base = artifact.load(tmp / "slot" / "work")
    print(f"honest tiny_cpu at {args.budget:g} s on {args.data}: {r.status} val_bpb {r.val_bpb:.4f}")
    print("| EPS | val_bpb (documents only) | raw val stream with canaries |\n|---|---|---|")
    for eps in (0.0, 0.001, 0.01, 0.05):
        folder = tmp / f"eps{eps}"
        folder.mkdir()
        batch, seq = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("seq", min=1, max=256)
        with torch.no_grad():
            program = torch.export.export(Hedged(base, eps), (torch.zeros(2, 16, dtype=torch.long),),
                                          dynamic_shapes=({0: batch, 1: seq},))
        artifact.save(program, folder)
        res = S.score({"artifact": str(folder), "dataset": str(ds.path), "seq_len": 256, "eval_tokens": 32768,
                       "device": "cpu", "probe_seed": 1})
        _, module = artifact.load(folder)
        raw = S.bits_per_byte(module, np.asarray(ds.tokens("val")), ds.tokenizer.token_bytes(), 256, 10**9,
                              ds.tokenizer.vocab_size, "cpu")
        print(f"| {eps:g} | {res.val_bpb:.4f} | {raw:.4f} |")


if __name__ == "__main__":
    main()
