"""Trusted scoring, in its own (sandboxed) process: load an artifact, compute bits per byte and probes.

This process never imports genome code: it loads the artifact through `gpt.artifact` (data:
a checked graph of ATen ops and safetensors weights), computes log-softmax over the full
logits itself and divides by the byte length of every target token. Run as
`python -m gpt.score`: one JSON request per line on stdin, one JSON answer per line on stdout,
for as many artifacts as the runner sends (gpt.scorer keeps the process between slots); it imports
torch before reading stdin so the runner can start it early.

The metric: bits per byte on the split's *documents only* (`Dataset.text_tokens`: the planted
canaries are cut out of the stream), in windows of `seq_len` that start 2 x `seq_len` apart
(no row holds another row's answer), in a secret order,
`eval_tokens` target tokens per split, batches of exactly SCORE_BATCH rows (the shape the model
was exported at: a short scoring batch is padded with copies of its own rows, which carry no text
the batch does not already hold; a short canary batch is filled with scoring windows). Every
result says how many tokens it scored.

Probes run on batches of the same shape as scoring, in an order shuffled by the request's
`probe_seed` (drawn by the runner per evaluation; the genome never sees it), so neither order
nor shape tells a probe from a scoring batch (content can: a twin's rows hold splices, a canary
row a random string; each probe compares outputs an honest model computes identically, so telling
them apart gains nothing). The model gets a copy of its input that owns its storage. All of them
fail closed: a non-finite logit or log-probability, in any batch, fails the evaluation (`nan`); a
non-finite probe statistic fails the probe.
- causality: every scoring batch is run again, its rows permuted and each row's suffix after a
  secret cut replaced by other real text; the prefix log-probs must not move (CAUSALITY_TOL
  nats, the same for every dtype: an honest causal model gives identical prefix outputs);
- canary: each planted canary, in the context it has in its split, scored against
  controls (planted nowhere) in the same contexts;
- stateless: the graph mutates no parameter, buffer or input, and a secret scoring batch
  run twice scores the same.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gpt import artifact
from gpt.result import SCORER_FIELDS, SlotResult
from gpt.data import CANARY_PREFIX, Dataset, canary_text
from gpt.protocol import EVAL_BATCH

DEFAULT_EVAL_TOKENS = 32768
SCORE_BATCH = EVAL_BATCH
CAUSALITY_TOL = 1e-3
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
    """The model's output is not logits of the right shape."""


class NonFinite(Exception):
    """The model's output holds a NaN or an infinity: the evaluation fails closed."""


def _log_probs(fn, x: torch.Tensor, vocab_size: int) -> torch.Tensor:
    x = x.clone(memory_format=torch.contiguous_format)  # its own storage: a view of the (seq_len + 1)-token rows
    torch.manual_seed(SCORER_SEED)  # every call draws the same random numbers: how many an earlier call drew
    with torch.no_grad():  # is not a channel from one batch to the next (a view of the rows would let
        logits = fn(x)  # `as_strided` read the column past them, the last position's target)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (*x.shape, vocab_size):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise BadOutput(f"model returned {shape}, expected logits of shape {(*x.shape, vocab_size)}")
    if not torch.isfinite(logits).all():
        raise NonFinite("the model's logits hold NaN or infinite values")
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    if not torch.isfinite(log_probs).all():  # finite logits of a wider dtype (1e300) overflow float32 to NaN here
        raise NonFinite("the model's log-probabilities hold NaN or infinite values (logits beyond float32's range)")
    return log_probs


def _target_nll(fn, rows: torch.Tensor, vocab_size: int, device: str, targets: torch.Tensor | None = None,
                batch_size: int = SCORE_BATCH) -> torch.Tensor:
    """Negative log-likelihood (nats, float64, on the CPU) of every target of (seq_len + 1)-token rows:
    the model reads rows[:, :-1]; the targets are rows[:, 1:], or `targets` when given. A batch of
    fewer than `batch_size` rows is fed padded with copies of its own rows (a copy holds nothing its
    row does not, and a static-shape graph accepts only full batches); the copies are not scored."""
    n = len(rows)
    if n < batch_size:
        cycle = torch.arange(batch_size) % n
        rows = rows[cycle]
        targets = None if targets is None else targets[cycle]
    chunk = rows.to(device)
    lp = _log_probs(fn, chunk[:, :-1], vocab_size)
    y = (chunk if targets is None else targets.to(device))[:, 1:]
    return -lp.gather(-1, y.unsqueeze(-1)).squeeze(-1).double().cpu()[:n]


def windows(tokens: np.ndarray, seq_len: int, n_tokens: int) -> np.ndarray:
    """(seq_len + 1)-token windows from the start of a stream, 2 * seq_len apart: no window's target
    (nor the token after it) is in any other window, so no row of a batch holds another row's answer."""
    stride = 2 * seq_len
    n = max(min(max(n_tokens // seq_len, 1), (len(tokens) - seq_len - 1) // stride + 1), 1)
    idx = np.arange(n)[:, None] * stride + np.arange(seq_len + 1)
    return tokens[idx].astype(np.int64)


def bits_per_byte(fn, tokens: np.ndarray, token_bytes: np.ndarray, seq_len: int, n_tokens: int,
                  vocab_size: int, device: str, batch_size: int = SCORE_BATCH) -> float:
    """Sum of target-token negative log2-likelihoods over the sum of their byte lengths."""
    w = torch.from_numpy(windows(tokens, seq_len, n_tokens))
    tb = torch.from_numpy(token_bytes)
    nats = sum(float(_target_nll(fn, w[i:i + batch_size], vocab_size, device, batch_size=batch_size).sum())
               for i in range(0, len(w), batch_size))
    return nats / math.log(2) / int(tb[w[:, 1:]].sum())


@dataclass
class CanaryRows:
    """Rows of (seq_len + 1) tokens: split context, then a canary; `scored` marks the canary's targets."""

    rows: torch.Tensor  # [n, seq_len + 1]
    scored: torch.Tensor  # [n, seq_len] bool
    owner: list  # per row: ("planted", canary index) or ("control", control index)


def canary_rows(dataset: Dataset, split: str, seq_len: int) -> CanaryRows:
    """Each planted canary once (its first planting with a full context), as it lies in the split file;
    each control after the context of a planted one, tokenized as it would be planted."""
    tok = dataset.tokenizer
    token_bytes = tok.token_bytes()
    tokens = dataset.tokens(split)
    n_prefix = len(("\n" + CANARY_PREFIX).encode("utf-8"))
    contexts, rows, scored, owner = [], [], [], []

    def add(context: np.ndarray, canary: np.ndarray, who) -> None:
        ends = np.cumsum(token_bytes[canary])
        row = np.concatenate([context, canary])
        mask = np.zeros(seq_len, bool)
        first = len(context)
        for k in np.flatnonzero(ends > n_prefix):  # canary token k is the target at position first + k - 1
            mask[first + k - 1] = True
        rows.append(row)
        scored.append(mask)
        owner.append(who)

    done = set()
    for start, end, idx in dataset.canary_spans(split):
        length = end - start
        need = seq_len + 1 - length
        if idx in done or start < need or length >= seq_len:
            continue
        contexts.append(start)
        add(np.asarray(tokens[start - need:start], dtype=np.int64), np.asarray(tokens[start:end], dtype=np.int64),
            ("planted", int(idx)))
        done.add(idx)
    if not contexts:
        raise ValueError(f"no canary of the {split} split has {seq_len} tokens of context before it")
    for j, control in enumerate(dataset.manifest["canaries"]["control"]):
        canary = tok.encode(canary_text(control)).astype(np.int64)
        start, need = contexts[j % len(contexts)], seq_len + 1 - len(canary)
        if 0 < need <= start:
            add(np.asarray(tokens[start - need:start], dtype=np.int64), canary, ("control", j))
    return CanaryRows(torch.from_numpy(np.stack(rows)), torch.from_numpy(np.stack(scored)), owner)


def canary_bits(fn, tokenizer, canaries: list[str], vocab_size: int, device: str) -> np.ndarray:
    """Mean bits per byte of each canary's random part, each scored on its own after a newline
    (no split context): the stand-alone form, for tokenizer tests and quick checks."""
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


def canary_verdict(planted: np.ndarray, control: np.ndarray) -> dict:
    """A model that never saw the split scores its planted canaries like the controls."""
    gap = float(control.mean() - planted.mean())
    se = float(math.sqrt(planted.var(ddof=1) / len(planted) + control.var(ddof=1) / len(control)))
    finite = math.isfinite(gap) and math.isfinite(se)
    seen = (not finite) or gap > max(CANARY_MIN_GAP_BITS, CANARY_SIGMAS * se)
    return {"planted_bits": float(planted.mean()), "control_bits": float(control.mean()), "gap_bits": gap,
            "stderr": se, "pass": not seen}


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


@dataclass
class Plan:
    """Every batch one evaluation runs, in a secret order: scoring, canary, causality and repeat batches
    all have SCORE_BATCH rows of seq_len + 1 tokens (a short scoring batch, at a split's end, is fed
    padded with copies of its rows; a short canary batch is filled here with the split's scoring windows)."""

    batches: list  # (kind, split, index, rows tensor, targets: the rows whose [:, 1:] are scored, or None)
    twins: dict  # (split, index) -> (row permutation, cuts): each scoring batch's causality twin
    repeated: tuple  # (split, index) of the scoring batch run twice
    canaries: dict  # split -> CanaryRows, in the order of that split's canary batches


def plan(dataset: Dataset, splits: list[str], seq_len: int, n_tokens: int, probe_seed: int) -> Plan:
    """Every scoring batch (windows in a secret order) gets a causality twin: its rows permuted, each row's
    suffix after a secret cut replaced by other real text of the split. A model whose output before the
    cut depends on the future, or on the other rows of its batch, shows it in every batch it does so."""
    rng = np.random.default_rng([probe_seed, 0x5C0E])
    batches, twins, canaries = [], {}, {}
    for split in splits:
        text = dataset.text_tokens(split)
        w = torch.from_numpy(windows(text, seq_len, n_tokens))
        w = w[torch.from_numpy(rng.permutation(len(w)))]
        for i in range(0, len(w), SCORE_BATCH):
            rows = w[i:i + SCORE_BATCH]
            index = i // SCORE_BATCH
            batches.append(("score", split, index, rows, None))
            perm = torch.from_numpy(rng.permutation(len(rows)))
            cuts = rng.integers(1, seq_len + 1, len(rows))  # seq_len: only the last target changes
            original = rows[perm]
            altered = original.clone()
            for r, cut in enumerate(cuts):
                src = int(rng.integers(0, len(text) - seq_len - 1))
                altered[r, cut:] = torch.from_numpy(np.asarray(text[src:src + seq_len + 1 - cut], dtype=np.int64))
            # scored against the original targets: a model whose output at t reads token t + 1 moves at t = cut - 1
            batches.append(("causality", split, index, altered, original))
            twins[(split, index)] = (perm, cuts)
        c = canaries[split] = canary_rows(dataset, split, seq_len)
        for i in range(0, len(c.rows), SCORE_BATCH):
            rows = c.rows[i:i + SCORE_BATCH]
            if len(rows) < SCORE_BATCH:  # filled with scoring windows: neither its size nor repeats show canaries
                rows = torch.cat([rows, w[:SCORE_BATCH - len(rows)]])
            batches.append(("canary", split, i // SCORE_BATCH, rows, None))
    scoring = [b for b in batches if b[0] == "score"]
    rep = scoring[int(rng.integers(len(scoring)))]
    batches.append(("repeat", rep[1], rep[2], rep[3], None))
    order = rng.permutation(len(batches))
    return Plan([batches[i] for i in order], twins, (rep[1], rep[2]), canaries)


def score(request: dict) -> SlotResult:
    """Score one artifact. Returns status, bpb per split, the tokens scored and the probe results."""
    start = time.monotonic()
    dataset = Dataset(Path(request["dataset"]))
    device = request.get("device", "cpu")
    seq_len = int(request.get("seq_len", 256))
    n_tokens = int(request.get("eval_tokens", DEFAULT_EVAL_TOKENS))
    probe_seed = int(request.get("probe_seed", 0))
    splits = ["val", "heldout"] + (["test"] if request.get("test") else [])
    tok = dataset.tokenizer
    vocab = tok.vocab_size
    token_bytes = torch.from_numpy(tok.token_bytes())
    scoring = {"eval_tokens": n_tokens, "seq_len": seq_len, "batch_size": SCORE_BATCH}
    result = SlotResult(status="ok", reason=None, scoring=scoring)

    def failed(reason: str, detail: str) -> SlotResult:
        return dataclasses.replace(result, status="failed", reason=reason, detail=detail,
                                   eval_seconds=time.monotonic() - start)

    try:
        program, fn = artifact.load(request["artifact"])
        fn = fn.to(device)
    except artifact.BadArtifact as exc:
        return failed("bad_artifact", str(exc))
    with _fresh_memory():
        return _score_loaded(program, fn, dataset, device, seq_len, n_tokens, probe_seed, splits, vocab, token_bytes,
                             result, scoring, failed, start)


class _fresh_memory:
    """Deterministic mode while scoring: new tensors (aten.empty and friends) are filled, never handed out holding
    what an earlier batch left in memory, which a graph could otherwise read back without writing any state."""

    def __enter__(self):
        import torch.utils.deterministic as det

        self.saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                      det.fill_uninitialized_memory)
        torch.use_deterministic_algorithms(True, warn_only=True)
        det.fill_uninitialized_memory = True

    def __exit__(self, *exc):
        import torch.utils.deterministic as det

        torch.use_deterministic_algorithms(self.saved[0], warn_only=self.saved[1])
        det.fill_uninitialized_memory = self.saved[2]


def _score_loaded(program, fn, dataset, device, seq_len, n_tokens, probe_seed, splits, vocab, token_bytes, result,
                  scoring, failed, start) -> SlotResult:
    try:
        work = plan(dataset, splits, seq_len, n_tokens, probe_seed)
        nll: dict = {}
        for kind, split, index, rows, targets in work.batches:
            nll[(kind, split, index)] = _target_nll(fn, rows, vocab, device, targets)
        probes = {}
        for split in splits:
            keys = sorted(k for k in nll if k[0] == "score" and k[1] == split)
            rows = torch.cat([b[3] for b in work.batches if b[0] == "score" and b[1] == split])
            targets = rows[:, 1:]
            setattr(result, f"{split}_bpb", float(sum(float(nll[k].sum()) for k in keys) / math.log(2)
                                                  / int(token_bytes[targets].sum())))
            scoring[f"{split}_tokens"] = int(targets.numel())
        result.scored_tokens = scoring["val_tokens"]
        probes["causality"] = _causality(nll, work)
        probes["canary"] = _canary(nll, work, token_bytes)
        mutations = graph_mutations(program)
        drift = float((nll[("score", *work.repeated)] - nll[("repeat", *work.repeated)]).abs().max())
        probes["stateless"] = {"pass": not mutations and drift <= STATELESS_TOL, "graph_mutations": mutations,
                               "repeat_drift": drift}
    except NonFinite as exc:
        return failed("nan", str(exc))
    except BadOutput as exc:
        return failed("bad_output", str(exc))
    except Exception as exc:
        return failed("score_error", f"{type(exc).__name__}: {exc}")
    result.probes = probes
    for name, probe in probes.items():
        probe["pass"] = bool(probe["pass"]) and all(math.isfinite(v) for v in _numbers(probe))  # fail closed
        setattr(result, name, "pass" if probe["pass"] else "fail")
    failed_probes = [name for name, probe in probes.items() if not probe["pass"]]
    if failed_probes:
        result.flag(*failed_probes)
    result.eval_seconds = time.monotonic() - start
    return result


def _numbers(value):
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield float(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)


def _causality(nll: dict, work: Plan) -> dict:
    """Every scoring batch against its twin: at every position before a row's cut (whose inputs are
    unchanged) the log-prob of the original target must not move."""
    worst, rows = 0.0, 0
    for (split, index), (perm, cuts) in work.twins.items():
        before, after = nll[("score", split, index)][perm], nll[("causality", split, index)]
        for r, c in enumerate(cuts):
            change = float((before[r, :c] - after[r, :c]).abs().max())
            worst = math.inf if math.isnan(change) else max(worst, change)  # Python's max would drop a NaN
        rows += len(cuts)
    return {"pass": worst <= CAUSALITY_TOL, "max_prefix_change": worst, "tolerance": CAUSALITY_TOL, "rows": rows}


def _canary(nll: dict, work: Plan, token_bytes: torch.Tensor) -> dict:
    out = {"pass": True}
    for split, c in work.canaries.items():
        losses = torch.cat([nll[k] for k in sorted(k for k in nll if k[0] == "canary" and k[1] == split)])
        losses = losses[:len(c.rows)]  # the last batch's filler rows are not canaries
        byte_len = token_bytes[c.rows[:, 1:]].double()
        bits = ((losses * c.scored).sum(1) / math.log(2) / (byte_len * c.scored).sum(1)).numpy()
        planted = np.array([b for b, (who, _) in zip(bits, c.owner) if who == "planted"])
        control = np.array([b for b, (who, _) in zip(bits, c.owner) if who == "control"])
        out[split] = canary_verdict(planted, control)
        out["pass"] = out["pass"] and out[split]["pass"]
    return out


def _warm_imports() -> None:
    """Import what loading an artifact needs before the request arrives (about 2 s on a CPU)."""
    import safetensors.torch  # noqa: F401
    import torch._export.non_strict_utils  # noqa: F401
    import torch._export.serde.serialize  # noqa: F401


SCORER_SEED = 0  # every request starts from the same RNG state, whatever the scorer scored before


def main() -> None:
    """One request per line on stdin, one answer per line on stdout, until end of input."""
    _warm_imports()
    if "--device" in sys.argv:  # the GPU context exists before any genome of this slot trains, not after the first
        torch.zeros(1, device=sys.argv[sys.argv.index("--device") + 1])
    for line in sys.stdin:
        request = json.loads(line)
        torch.manual_seed(SCORER_SEED)
        if request.get("threads"):
            torch.set_num_threads(int(request["threads"]))
        answer = score(request).to_dict()
        fields = {k: answer[k] for k in SCORER_FIELDS}  # only what it measures, and the request it answers
        sys.stdout.write(json.dumps({"artifact": request.get("artifact"), **fields}) + "\n")
        sys.stdout.flush()
        del answer
        gc.collect()  # the artifact's graph and weights, before the next genome trains beside this process
        if request.get("device", "cpu").startswith("cuda"):
            torch.cuda.empty_cache()  # the next genome trains beside this scorer: it holds no cached blocks
    os._exit(0)  # tearing down torch's export stack takes a second


if __name__ == "__main__":
    main()
