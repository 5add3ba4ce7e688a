"""Trusted scoring, in its own process: load an exported program, compute bits per byte and probes.

This process never imports genome code: it loads a `torch.export` artifact, computes
log-softmax over the full logits itself and divides by the byte length of every target
token. Run as `python -m gpt.score` with a JSON request on stdin and the JSON result on
stdout; it imports torch before reading stdin so the slot runner can start it early.

Probes (each pass/fail):
- causality: at random cut points, prefix log-probs must not move when the suffix is
  replaced (tolerance CAUSALITY_TOL nats: float32 reductions differ by ~1e-6 when
  unrelated batch content changes; bf16 models are allowed CAUSALITY_TOL_LOWP);
- canary: bpb on canaries planted in each eval split vs controls planted nowhere;
- stateless: the graph mutates no parameter, buffer or input, and a batch scored before
  and after the evaluation scores the same.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gpt import artifact
from gpt.data import CANARY_PREFIX, Dataset

DEFAULT_EVAL_TOKENS = 32768
CAUSALITY_CUTS = 4
CAUSALITY_TOL = 1e-3
CAUSALITY_TOL_LOWP = 5e-2
# Planted canaries must beat the controls by CANARY_MIN_GAP_BITS bits per byte AND by
# CANARY_SIGMAS standard errors to fail the probe. Calibrated on a 400 KB text corpus
# (fractions 0.1, 8 dataset seeds, val/heldout/test) with models that never saw an eval
# split (hashed 6-gram counts, unigram, 2-layer byte GPT, all fitted on train): gaps ran
# from -0.17 to +0.28 bits, always within 2.9 standard errors. A 2-layer byte GPT trained
# for 300 steps (~4 passes) on the val split gave gaps of +0.28 to +0.32 bits at ~8 s.e.
# (100 steps: +0.14 to +0.17 at ~4 s.e.), and a count model of val +7.2 bits. The former
# 0.5-bit floor let the 300-step memorizer pass; 0.2 bits catches it while the 4 s.e.
# rule keeps honest models (at most 2.9 s.e.) passing. The floor guards against an
# underestimated standard error when a model scores every canary almost alike.
CANARY_MIN_GAP_BITS = 0.2
CANARY_SIGMAS = 4.0
STATELESS_TOL = 1e-5


class BadOutput(Exception):
    """The model's output is not logits of the right shape, or not finite."""


def _log_probs(fn, x: torch.Tensor, vocab_size: int) -> torch.Tensor:
    with torch.no_grad():
        logits = fn(x)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (*x.shape, vocab_size):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise BadOutput(f"model returned {shape}, expected logits of shape {(*x.shape, vocab_size)}")
    return torch.log_softmax(logits.float(), dim=-1)


def windows(tokens: np.ndarray, seq_len: int, n_tokens: int) -> np.ndarray:
    """Non-overlapping (seq_len + 1)-token windows from the start of a split."""
    n = min(max(n_tokens // seq_len, 1), (len(tokens) - 1) // seq_len)
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)
    return tokens[idx].astype(np.int64)


def bits_per_byte(fn, tokens: np.ndarray, token_bytes: np.ndarray, seq_len: int, n_tokens: int,
                  vocab_size: int, device: str, batch_size: int = 32) -> float:
    """Sum of target-token negative log2-likelihoods over the sum of their byte lengths."""
    w = torch.from_numpy(windows(tokens, seq_len, n_tokens))
    tb = torch.from_numpy(token_bytes)
    nats, nbytes = 0.0, 0
    for i in range(0, len(w), batch_size):
        chunk = w[i:i + batch_size].to(device)
        x, y = chunk[:, :-1], chunk[:, 1:]
        lp = _log_probs(fn, x, vocab_size)
        nats += float(-lp.gather(-1, y.unsqueeze(-1)).double().sum())
        nbytes += int(tb[y.cpu()].sum())
    return nats / math.log(2) / nbytes


def causality_probe(fn, tokens: np.ndarray, seq_len: int, vocab_size: int, device: str, seed: int) -> dict:
    """Replace the suffix after a random cut; the prefix log-probs must stay put."""
    rng = np.random.default_rng([seed, 0xCA05])
    x = torch.from_numpy(windows(tokens, seq_len, CAUSALITY_CUTS * seq_len)[:CAUSALITY_CUTS, :-1]).to(device)
    cuts = rng.integers(1, seq_len, len(x))
    x2 = x.clone()
    for b, c in enumerate(cuts):
        x2[b, c:] = torch.from_numpy(rng.integers(0, vocab_size, seq_len - c)).to(device)
    with torch.no_grad():
        low_precision = fn(x[:1]).dtype in (torch.bfloat16, torch.float16)
    lp, lp2 = _log_probs(fn, x, vocab_size), _log_probs(fn, x2, vocab_size)
    worst = max(float((lp[b, :c] - lp2[b, :c]).abs().max()) for b, c in enumerate(cuts))
    tol = CAUSALITY_TOL_LOWP if low_precision else CAUSALITY_TOL
    return {"pass": worst <= tol, "max_prefix_change": worst, "tolerance": tol, "cuts": cuts.tolist()}


def canary_bits(fn, tokenizer, canaries: list[str], vocab_size: int, device: str) -> np.ndarray:
    """Mean bits per byte of each canary's random part, after its fixed prefix.

    Prefix and canary are encoded together, as they appear in the data (a BPE tokenizer may
    merge the prefix's last byte into the canary); every token ending past the prefix is
    scored. Canaries of equal token length are scored in one batch."""
    context = "\n" + CANARY_PREFIX
    n_context = len(context.encode("utf-8"))
    token_bytes = tokenizer.token_bytes()
    seqs = [tokenizer.encode(context + c).astype(np.int64) for c in canaries]
    out = np.empty(len(seqs))
    for length in sorted({len(seq) for seq in seqs}):
        idx = [i for i, seq in enumerate(seqs) if len(seq) == length]
        x = torch.from_numpy(np.stack([seqs[i] for i in idx])).to(device)
        lp = _log_probs(fn, x[:, :-1], vocab_size)
        nll = -lp.gather(-1, x[:, 1:].unsqueeze(-1)).squeeze(-1).double().cpu().numpy()
        for row, i in enumerate(idx):
            ends = np.cumsum(token_bytes[seqs[i]])
            scored = ends[1:] > n_context  # targets are tokens 1..; score those ending inside the canary
            out[i] = nll[row][scored].sum() / math.log(2) / token_bytes[seqs[i][1:]][scored].sum()
    return out


def canary_probe(fn, dataset: Dataset, splits, vocab_size: int, device: str) -> dict:
    """A model that never saw an eval split scores its planted canaries like the controls."""
    info = dataset.manifest["canaries"]
    tok = dataset.tokenizer
    control = canary_bits(fn, tok, info["control"], vocab_size, device)
    out = {"pass": True, "control_bits": float(control.mean())}
    for split in splits:
        planted = canary_bits(fn, tok, info[split], vocab_size, device)
        gap = float(control.mean() - planted.mean())
        se = float(math.sqrt(planted.var(ddof=1) / len(planted) + control.var(ddof=1) / len(control)))
        seen = gap > max(CANARY_MIN_GAP_BITS, CANARY_SIGMAS * se)
        out[split] = {"planted_bits": float(planted.mean()), "gap_bits": gap, "stderr": se, "pass": not seen}
        out["pass"] = out["pass"] and not seen
    return out


def _write_target(node):
    """The node an in-place op writes to, followed back through views to its source."""
    schema = getattr(node.target, "_schema", None)
    if schema is None or not schema.is_mutable:
        return None
    for i, arg in enumerate(schema.arguments):
        if arg.alias_info is not None and arg.alias_info.is_write:
            target = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name)
            while isinstance(target, torch.fx.Node) and target.op == "call_function":
                ret = getattr(getattr(target.target, "_schema", None), "returns", None)
                if not ret or ret[0].alias_info is None:
                    break
                target = target.args[0]
            return target
    return None


def graph_mutations(program) -> list[str]:
    """In-place writes to parameters, buffers or inputs, read from the graph's ops, not only its signature."""
    sig = program.graph_signature
    found = [f"signature mutates {name}" for name in
             list(sig.buffers_to_mutate.values()) + list(sig.user_inputs_to_mutate.values())]
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        target = _write_target(node)
        if isinstance(target, torch.fx.Node) and target.op == "placeholder":
            found.append(f"{node.target} writes {target.name}")
    return found


def score(request: dict) -> dict:
    """Score one artifact. Returns status, bpb per split and probe results."""
    start = time.monotonic()
    dataset = Dataset(Path(request["dataset"]))
    device = request.get("device", "cpu")
    seq_len = int(request.get("seq_len", 256))
    n_tokens = int(request.get("eval_tokens", DEFAULT_EVAL_TOKENS))
    seed = int(request.get("probe_seed", 0))  # drawn by the runner per evaluation; the genome never sees it
    splits = ["val", "heldout"] + (["test"] if request.get("test") else [])
    tok = dataset.tokenizer
    vocab = tok.vocab_size
    result: dict = {"status": "ok", "reason": None}
    try:
        program = artifact.load(request["artifact"])
        fn = program.module().to(device)
    except artifact.BadArtifact as exc:
        return {"status": "failed", "reason": "bad_artifact", "detail": str(exc), "eval_seconds": time.monotonic() - start}
    try:
        probe_batch = torch.from_numpy(windows(dataset.tokens("val"), seq_len, 2 * seq_len)[:2, :-1]).to(device)
        before = _log_probs(fn, probe_batch, vocab)
        for split in splits:
            result[f"{split}_bpb"] = bits_per_byte(fn, dataset.tokens(split), tok.token_bytes(), seq_len,
                                                   n_tokens, vocab, device)
        if not all(math.isfinite(result[f"{s}_bpb"]) for s in splits):
            result.update(status="failed", reason="nan")
            result["eval_seconds"] = time.monotonic() - start
            return result
        probes = {
            "causality": causality_probe(fn, dataset.tokens("val"), seq_len, vocab, device, seed),
            "canary": canary_probe(fn, dataset, splits, vocab, device),
        }
        after = _log_probs(fn, probe_batch, vocab)
        mutations = graph_mutations(program)
        drift = float((before - after).abs().max())
        probes["stateless"] = {"pass": not mutations and drift <= STATELESS_TOL,
                               "graph_mutations": mutations, "repeat_drift": drift}
    except BadOutput as exc:
        return {"status": "failed", "reason": "bad_output", "detail": str(exc),
                "eval_seconds": time.monotonic() - start}
    except Exception as exc:
        return {"status": "failed", "reason": "score_error", "detail": f"{type(exc).__name__}: {exc}",
                "eval_seconds": time.monotonic() - start}
    result["probes"] = probes
    for name, probe in probes.items():
        result[name] = "pass" if probe["pass"] else "fail"
    failed = [name for name, probe in probes.items() if not probe["pass"]]
    if failed:
        result.update(status="flagged", reason=",".join(failed))
    result["eval_seconds"] = time.monotonic() - start
    return result


def _warm_imports() -> None:
    """Import what loading an artifact needs before the request arrives (about 2 s on a CPU)."""
    import safetensors.torch  # noqa: F401
    import torch._export.non_strict_utils  # noqa: F401
    import torch._export.serde.serialize  # noqa: F401


def main() -> None:
    _warm_imports()
    request = json.loads(sys.stdin.read() or "null")
    if request is None:  # the runner closed stdin: nothing to score
        return
    if request.get("threads"):
        torch.set_num_threads(int(request["threads"]))
    json.dump(score(request), sys.stdout)


if __name__ == "__main__":
    main()
