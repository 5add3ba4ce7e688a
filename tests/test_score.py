"""The trusted scorer on models whose answers are known: exact bits per byte and each probe.

Every model here is a real torch module, exported with the genome path's own
`gpt.lab.export_model`, saved with `gpt.artifact.save` (what `run.submit` writes) and scored
from the saved artifact.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt import artifact
from gpt import score as S
from gpt.lab import export_model
from gpt.result import SCORER_FIELDS, SlotResult

SEQ_LEN = 64
EVAL_TOKENS = 4096
VOCAB = 256


# ---------------------------------------------------------------- helpers


def save(model: nn.Module, folder) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    artifact.save(export_model(model, SEQ_LEN, "cpu"), folder)
    return str(folder)


def request(artifact: str, dataset, **extra) -> dict:
    return {"artifact": artifact, "dataset": str(dataset.path), "seq_len": SEQ_LEN, "eval_tokens": EVAL_TOKENS,
            "device": "cpu", "probe_seed": 0, **extra}


def score_model(model: nn.Module, dataset, tmp_path, **extra) -> SlotResult:
    return S.score(request(save(model, tmp_path / "artifact"), dataset, **extra))


def reasons(result: SlotResult) -> list[str]:
    return (result.reason or "").split(",")


def scored_val_targets(tokens: np.ndarray) -> np.ndarray:
    """The val tokens the scorer predicts: the targets of its windows (SEQ_LEN + 1 tokens, starting
    2 x SEQ_LEN apart), computed here on their own."""
    n_windows = min(EVAL_TOKENS // SEQ_LEN, (len(tokens) - SEQ_LEN - 1) // (2 * SEQ_LEN) + 1)
    return np.concatenate([np.asarray(tokens[i * 2 * SEQ_LEN + 1:i * 2 * SEQ_LEN + SEQ_LEN + 1])
                           for i in range(n_windows)]).astype(np.int64)


class ConstantLogits(nn.Module):
    """The same logits at every position: uniform (zeros), a unigram, or anything else."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.as_tensor(logits, dtype=torch.float32))

    def forward(self, idx):
        return self.logits.expand(idx.shape[0], idx.shape[1], VOCAB)


class OneAttention(nn.Module):
    """Embedding, one attention layer, head: causal or not, by a flag."""

    def __init__(self, causal: bool, width: int = 32, heads: int = 2):
        super().__init__()
        torch.manual_seed(0)
        self.causal, self.heads = causal, heads
        self.embed = nn.Embedding(VOCAB, width)
        self.qkv = nn.Linear(width, 3 * width)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, idx):
        x = self.embed(idx)
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.head(x + y.transpose(1, 2).reshape(B, T, C))


class SequenceMean(nn.Module):
    """Adds the mean of the whole sequence to every position: sees the future."""

    def __init__(self, width: int = 32):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, width)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, idx):
        x = self.embed(idx)
        return self.head(x + x.mean(dim=1, keepdim=True))


class CountsCalls(nn.Module):
    """Keeps state across calls: a buffer incremented in forward shifts its logits."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, VOCAB)
        self.register_buffer("count", torch.zeros(()))
        self.register_buffer("skew", torch.linspace(0.0, 1.0, VOCAB))  # so the shift survives log_softmax

    def forward(self, idx):
        self.count.add_(1)
        return self.embed(idx) + self.count * self.skew


class HashedNgram(nn.Module):
    """A lookup model: log-counts of the next byte after the hashed previous ORDER bytes.

    Fitted by counting (`fit`); causal and pure. Fitted on an eval split, it memorizes
    that split, canaries included: the kind of model the canary probe must catch."""

    ORDER, BUCKETS, MULT = 6, 1 << 16, 263

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)

    @classmethod
    def context_hashes(cls, tokens: np.ndarray) -> np.ndarray:
        padded = np.concatenate([np.zeros(cls.ORDER - 1, np.int64), tokens.astype(np.int64)])
        h = np.zeros(len(tokens), np.int64)
        for j in range(cls.ORDER):
            h = (h * cls.MULT + padded[j:j + len(tokens)]) % cls.BUCKETS
        return h

    @classmethod
    def fit(cls, tokens, alpha: float = 0.01) -> "HashedNgram":
        tokens = np.asarray(tokens)
        counts = np.zeros((cls.BUCKETS, VOCAB), np.float32)
        np.add.at(counts, (cls.context_hashes(tokens[:-1]), tokens[1:].astype(np.int64)), 1.0)
        return cls(torch.from_numpy(np.log(counts + alpha)).half())

    def forward(self, idx):
        T = idx.shape[1]
        padded = F.pad(idx, (self.ORDER - 1, 0))
        h = torch.zeros_like(idx)
        for j in range(self.ORDER):
            h = (h * self.MULT + padded[:, j:j + T]) % self.BUCKETS
        return self.table[h].float()


class Block(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.up = nn.Linear(width, 4 * width, bias=False)
        self.down = nn.Linear(4 * width, width, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(F.rms_norm(x, (C,))).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.down(F.relu(self.up(F.rms_norm(x, (C,)))).square())


class TinyGPT(nn.Module):
    """A 2-layer byte GPT (learned positions), the calibration model of the canary thresholds."""

    def __init__(self, width=96, depth=2, heads=4, max_len=256):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.pos = nn.Embedding(max_len, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.head = nn.Linear(width, VOCAB, bias=False)

    def forward(self, idx):
        x = self.embed(idx) + self.pos.weight[: idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(F.rms_norm(x, (x.size(-1),)))


def train_tiny_gpt(tokens, steps: int, seed: int = 0) -> TinyGPT:
    """Fixed steps (not seconds) so the result does not depend on how busy the machine is."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        data = np.asarray(tokens).astype(np.int64)
        model = TinyGPT()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        rng = np.random.default_rng(seed)
        for _ in range(steps):
            starts = rng.integers(0, len(data) - SEQ_LEN - 1, 16)
            chunk = torch.from_numpy(data[starts[:, None] + np.arange(SEQ_LEN + 1)])
            loss = F.cross_entropy(model(chunk[:, :-1]).flatten(0, 1), chunk[:, 1:].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------- bits per byte


def test_uniform_logits_score_exactly_8_bits_per_byte_in_the_scorer_process(small_dataset, tmp_path):
    artifact = save(ConstantLogits(torch.zeros(VOCAB)), tmp_path / "uniform")
    proc = subprocess.run([sys.executable, "-m", "gpt.score"], input=json.dumps(request(artifact, small_dataset, test=True)),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout)
    assert answer.pop("artifact") == artifact  # the request it answers
    assert set(answer) <= set(SCORER_FIELDS)  # and only what it measures
    result = SlotResult.from_dict(answer)
    for split in ("val", "heldout", "test"):
        assert getattr(result, f"{split}_bpb") == pytest.approx(8.0, abs=1e-6)
    assert (result.status, result.reason) == ("ok", None)
    assert (result.causality, result.canary, result.stateless) == ("pass", "pass", "pass")
    for split in ("val", "heldout", "test"):
        assert result.probes["canary"][split]["control_bits"] == pytest.approx(8.0, abs=1e-6)
    assert result.scoring["val_tokens"] == result.scored_tokens > 0


def test_test_split_is_scored_only_when_asked(small_dataset, tmp_path):
    result = score_model(ConstantLogits(torch.zeros(VOCAB)), small_dataset, tmp_path)
    assert result.test_bpb is None and result.val_bpb == pytest.approx(8.0, abs=1e-6)


def test_unigram_model_scores_the_empirical_entropy_of_the_scored_val_bytes(small_dataset, tmp_path):
    targets = scored_val_targets(small_dataset.text_tokens("val"))
    counts = np.bincount(targets, minlength=VOCAB).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    entropy = float(-(p * np.log2(p)).sum())
    # log of the empirical frequencies; bytes never seen get a logit whose probability underflows to 0
    logits = np.where(counts > 0, np.log(np.maximum(counts, 1) / counts.sum()), -1e4)
    result = score_model(ConstantLogits(logits), small_dataset, tmp_path)
    assert 3.0 < entropy < 7.0  # real text, not a degenerate split
    assert result.val_bpb == pytest.approx(entropy, rel=1e-6)


# ---------------------------------------------------------------- causality


def test_causality_probe_passes_an_honest_causal_attention_model(small_dataset, tmp_path):
    result = score_model(OneAttention(causal=True), small_dataset, tmp_path)
    assert (result.status, result.causality) == ("ok", "pass")
    assert result.probes["causality"]["max_prefix_change"] <= S.CAUSALITY_TOL


def test_causality_probe_fails_attention_that_is_not_causal(small_dataset, tmp_path):
    result = score_model(OneAttention(causal=False), small_dataset, tmp_path)
    assert result.status == "flagged" and "causality" in reasons(result)
    assert result.causality == "fail"
    assert result.probes["causality"]["max_prefix_change"] > 10 * S.CAUSALITY_TOL


def test_causality_probe_fails_features_averaged_over_the_whole_sequence(small_dataset, tmp_path):
    result = score_model(SequenceMean(), small_dataset, tmp_path)
    assert result.status == "flagged" and "causality" in reasons(result)
    assert result.probes["causality"]["max_prefix_change"] > 10 * S.CAUSALITY_TOL


# ---------------------------------------------------------------- canaries


def canary_summary(result: SlotResult) -> dict:
    c = result.probes["canary"]
    return {s: (round(c[s]["control_bits"], 3), round(c[s]["planted_bits"], 3), round(c[s]["gap_bits"], 3),
                round(c[s]["stderr"], 3)) for s in ("val", "heldout")}


def test_canary_probe_fails_a_model_that_memorized_val(small_dataset, tmp_path):
    memorizer = score_model(HashedNgram.fit(small_dataset.tokens("val")), small_dataset, tmp_path)
    print("memorizer canaries (control; planted, gap, s.e.):", canary_summary(memorizer))
    assert memorizer.status == "flagged" and reasons(memorizer) == ["canary"]
    probe = memorizer.probes["canary"]
    assert probe["val"]["pass"] is False and probe["val"]["gap_bits"] > 5.0
    assert probe["heldout"]["pass"] is True  # it never saw heldout: its canaries look like the controls
    assert memorizer.val_bpb < memorizer.heldout_bpb - 1.0  # what makes the probe necessary


def test_canary_probe_passes_the_same_model_fitted_on_train_only(small_dataset, tmp_path):
    honest = score_model(HashedNgram.fit(small_dataset.tokens("train")), small_dataset, tmp_path)
    print("honest canaries (control; planted, gap, s.e.):", canary_summary(honest))
    assert (honest.status, honest.canary) == ("ok", "pass")
    assert honest.probes["canary"]["val"]["pass"] and honest.probes["canary"]["heldout"]["pass"]


@pytest.mark.slow
def test_canary_probe_fails_a_small_transformer_trained_300_steps_on_val(small_dataset, tmp_path):
    # 300 steps of 16 x 64 bytes: about 4 passes over the val split (~40 KB, canaries included).
    # Its gap is ~0.3 bits at ~8 s.e.: the realistic case CANARY_MIN_GAP_BITS is tuned to catch.
    cheat = score_model(train_tiny_gpt(small_dataset.tokens("val"), steps=300), small_dataset, tmp_path)
    print("val-trained GPT canaries (control; planted, gap, s.e.):", canary_summary(cheat))
    assert cheat.canary == "fail" and cheat.probes["canary"]["val"]["pass"] is False
    assert cheat.probes["canary"]["heldout"]["pass"] is True


# ---------------------------------------------------------------- statelessness and bad outputs


def test_a_model_that_changes_a_buffer_in_forward_is_refused_before_it_is_scored(small_dataset, tmp_path):
    result = score_model(CountsCalls(), small_dataset, tmp_path)
    assert (result.status, result.reason) == ("failed", "bad_artifact")
    assert "changes its buffers" in result.detail and result.val_bpb is None


def test_statelessness_passes_a_pure_model(small_dataset, tmp_path):
    result = score_model(SequenceMean(), small_dataset, tmp_path)  # not causal, but pure
    probe = result.probes["stateless"]
    assert result.stateless == "pass" and probe["graph_mutations"] == [] and probe["repeat_drift"] == 0.0


class WrongVocab(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, VOCAB - 1)

    def forward(self, idx):
        return self.embed(idx)


class LastPositionOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, VOCAB)

    def forward(self, idx):
        return self.embed(idx)[:, -1]


class DictOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, VOCAB)

    def forward(self, idx):
        return {"logits": self.embed(idx)}


@pytest.mark.parametrize("model_cls", [WrongVocab, LastPositionOnly])
def test_model_returning_anything_but_logits_of_shape_b_t_vocab_fails_with_bad_output(small_dataset, tmp_path, model_cls):
    result = score_model(model_cls(), small_dataset, tmp_path)
    assert (result.status, result.reason) == ("failed", "bad_output")
    assert "expected logits of shape" in result.detail


def test_a_model_returning_a_dict_is_refused_as_a_bad_artifact_before_it_runs(small_dataset, tmp_path):
    result = score_model(DictOutput(), small_dataset, tmp_path)
    assert (result.status, result.reason) == ("failed", "bad_artifact")
    assert "return exactly one tensor" in result.detail


def test_non_finite_logits_fail_with_reason_nan(small_dataset, tmp_path):
    result = score_model(ConstantLogits(torch.full((VOCAB,), float("nan"))), small_dataset, tmp_path)
    assert (result.status, result.reason) == ("failed", "nan")
    assert "NaN" in result.detail and result.val_bpb is None


class Float64Overflow(nn.Module):
    """Finite float64 logits beyond float32's range at position 0 (1e300 on every token): they pass a
    finiteness check of the logits and become NaN log-probs in the scorer's float32 log-softmax."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, VOCAB)

    def forward(self, idx):
        logits = self.embed(idx).double()
        huge = torch.zeros_like(logits)
        huge[:, 0] = 1e300
        return logits + huge


def test_logits_that_overflow_float32_fail_with_reason_nan_not_a_nan_probe_statistic(small_dataset, tmp_path):
    result = score_model(Float64Overflow(), small_dataset, tmp_path)
    assert (result.status, result.reason) == ("failed", "nan"), (result.status, result.reason)
    assert "float32" in result.detail and result.val_bpb is None


class StoragePeek(nn.Module):
    """Reads the token after its input through the input's storage (`as_strided` past the view): the last
    position's target, the one token a row's input does not hold, when the input is a view of the rows."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, VOCAB)

    def forward(self, idx):
        b, t = idx.shape
        after = idx.as_strided((b, t + 1), (t + 1, 1))[:, t]
        logits = self.embed(idx)
        return torch.cat([logits[:, :-1], logits[:, -1:] + 30.0 * F.one_hot(after, VOCAB)[:, None]], 1)


def test_a_model_reading_past_its_input_storage_is_refused_before_it_runs(small_dataset, tmp_path):
    """`as_strided` is off the op allow-list (gpt/allowed_ops.py), so the graph never runs; were it allowed,
    each row's own storage would leave nothing past the view to find (torch bounds-checks the storage)."""
    result = score_model(StoragePeek(), small_dataset, tmp_path)
    assert (result.status, result.reason) == ("failed", "bad_artifact"), (result.status, result.reason, result.val_bpb)
    assert "as_strided" in result.detail and result.val_bpb is None


def test_a_nan_prefix_change_fails_causality_instead_of_vanishing_in_max():
    """A NaN in a twin's log-probs (a model that makes them only in probe batches) is the worst change."""
    from types import SimpleNamespace

    before = torch.zeros(2, 8, dtype=torch.float64)
    after = before.clone()
    after[1, 0] = float("nan")
    work = SimpleNamespace(twins={("val", 0): (torch.tensor([0, 1]), [4, 4])})
    probe = S._causality({("score", "val", 0): before, ("causality", "val", 0): after}, work)
    assert probe["pass"] is False and probe["max_prefix_change"] == float("inf")
    after[1, 0] = 0.0
    assert S._causality({("score", "val", 0): before, ("causality", "val", 0): after}, work)["pass"] is True


def test_an_artifact_that_is_not_an_exported_program_fails_with_bad_artifact(small_dataset, tmp_path):
    (tmp_path / artifact.PROGRAM_FILE).write_bytes(b"not a program")
    (tmp_path / artifact.WEIGHTS_FILE).write_bytes(b"not weights")
    result = S.score(request(str(tmp_path), small_dataset))
    assert (result.status, result.reason) == ("failed", "bad_artifact")
    assert "is not JSON" in result.detail and "run.submit(model)" in result.detail


# ---------------------------------------------------------------- the metric measures the text only
class Trigram(HashedNgram):
    ORDER, BUCKETS = 3, 1 << 14


class Hedged(nn.Module):
    """The same model with EPS of uniform probability mixed in: worse on real text, better on random strings."""

    EPS = 0.01

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, idx):
        p = torch.softmax(self.model(idx), dim=-1)
        return torch.log((1 - self.EPS) * p + self.EPS / VOCAB)


@pytest.fixture(scope="module")
def prose_dataset(tmp_path_factory):
    """A small prose corpus every Debian machine has: the common licenses, cut into ~2 KB documents."""
    from pathlib import Path

    from conftest import SMALL_FRACTIONS, SMALL_SECRET, write_corpus
    from gpt.data import prepare

    texts, seen = [], set()
    for path in sorted(Path("/usr/share/common-licenses").glob("*")):
        text = path.read_text(errors="strict") if path.is_file() else ""
        if text in seen:
            continue
        seen.add(text)
        paragraphs = text.split("\n\n")
        piece = []
        for para in paragraphs:
            piece.append(para)
            if sum(map(len, piece)) > 2000:
                texts.append("\n\n".join(piece))
                piece = []
    if len(texts) < 60:
        pytest.skip("/usr/share/common-licenses is missing or too small on this machine")
    folder = write_corpus(tmp_path_factory.mktemp("prose"), texts)
    return prepare(f"text:{folder}/*.txt", root=tmp_path_factory.mktemp("prose-data"), fractions=SMALL_FRACTIONS,
                   secret=SMALL_SECRET)


def test_a_model_that_hedges_never_beats_itself_unhedged_on_val_bpb(prose_dataset, tmp_path):
    """Canaries are random hex: a model that hedges toward uniform scores them better. They are cut out of
    the scored stream, so on val_bpb hedging only costs; with them left in (the old metric) it 'wins'."""
    model = Trigram.fit(prose_dataset.tokens("train"))
    plain = score_model(model, prose_dataset, tmp_path / "plain")
    hedged = score_model(Hedged(model), prose_dataset, tmp_path / "hedged")
    print(f"prose val_bpb: plain {plain.val_bpb:.4f}, hedged {hedged.val_bpb:.4f}; "
          f"scored tokens {plain.scored_tokens}")
    assert (plain.status, hedged.status) == ("ok", "ok")
    assert hedged.val_bpb >= plain.val_bpb - 0.005
    spans = prose_dataset.canary_spans("val")
    assert len(spans) and plain.scored_tokens <= len(prose_dataset.text_tokens("val"))
    # the same two models on the raw val stream, canaries included: the distortion the cut removes
    raw = {name: S.bits_per_byte(m.eval(), np.asarray(prose_dataset.tokens("val")), np.ones(VOCAB, np.int64),
                                 SEQ_LEN, 10**9, VOCAB, "cpu") for name, m in (("plain", model), ("hedged", Hedged(model)))}
    print(f"raw stream with canaries: plain {raw['plain']:.4f}, hedged {raw['hedged']:.4f}")
    assert raw["hedged"] < raw["plain"]


def test_no_scored_token_is_a_canary_token(small_dataset):
    """The scored stream is the documents: every canary span is cut out, nothing else is."""
    tokens, spans = np.asarray(small_dataset.tokens("val")), small_dataset.canary_spans("val")
    text = np.asarray(small_dataset.text_tokens("val"))
    assert len(text) == len(tokens) - int((spans[:, 1] - spans[:, 0]).sum())
    decoded = small_dataset.tokenizer.decode(text)
    assert "# canary " not in decoded


def test_a_short_batch_is_fed_padded_to_the_exported_shape_and_scores_as_its_rows_alone(small_dataset, tmp_path):
    """The model is exported at [SCORE_BATCH, seq_len] only; 40 windows make a batch of 32 and one of 8, which
    the scorer pads with copies of its own rows. The padded score equals the plain module's on the 40 rows."""
    model = OneAttention(causal=True).eval()
    folder = save(model, tmp_path / "static")
    _, module = artifact.load(folder)
    with pytest.raises(Exception):
        module(torch.zeros(8, SEQ_LEN, dtype=torch.long))  # a static graph refuses a short batch
    n_tokens = 40 * SEQ_LEN
    result = S.score(request(folder, small_dataset, eval_tokens=n_tokens))
    assert (result.status, result.causality, result.stateless) == ("ok", "pass", "pass")
    assert result.scoring["val_tokens"] == 40 * SEQ_LEN
    tokens = np.asarray(small_dataset.text_tokens("val"))
    token_bytes = small_dataset.tokenizer.token_bytes()
    plain = S.bits_per_byte(model, tokens, token_bytes, SEQ_LEN, n_tokens, VOCAB, "cpu", batch_size=40)
    assert result.val_bpb == pytest.approx(plain, rel=1e-5)


def test_every_planned_batch_is_full_and_a_short_canary_batch_is_filled_with_scoring_windows(small_dataset, tmp_path,
                                                                                         monkeypatch):
    """A short canary batch would show by its size (or, padded with copies, by its repeated rows) that it
    holds canaries; it is filled with windows the split scores instead, and only the canary rows count."""
    whole = S.canary_rows

    def fewer(dataset, split, seq_len):  # a split with fewer canary rows than a multiple of the batch
        c = whole(dataset, split, seq_len)
        return S.CanaryRows(c.rows[:80], c.scored[:80], c.owner[:80])

    monkeypatch.setattr(S, "canary_rows", fewer)
    work = S.plan(small_dataset, ["val"], SEQ_LEN, EVAL_TOKENS, probe_seed=3)
    assert all(len(rows) == S.SCORE_BATCH for _, _, _, rows, _ in work.batches)
    scoring = {tuple(r.tolist()) for kind, _, _, rows, _ in work.batches if kind == "score" for r in rows}
    last = max((b for b in work.batches if b[0] == "canary"), key=lambda b: b[2])[3]
    real = 80 % S.SCORE_BATCH
    assert len({tuple(r.tolist()) for r in last}) == S.SCORE_BATCH  # no repeated row gives it away
    assert all(tuple(r.tolist()) in scoring for r in last[real:])
    assert not any(tuple(r.tolist()) in scoring for r in last[:real])
    result = score_model(ConstantLogits(torch.zeros(VOCAB)), small_dataset, tmp_path)
    assert (result.status, result.canary) == ("ok", "pass")
    assert result.probes["canary"]["val"]["control_bits"] == pytest.approx(8.0, abs=1e-6)


class CopyPeek(nn.Module):
    """The attack on padding a short batch with copies: where another row of the batch equals this one, put
    nearly all the probability on that copy's next token. Uniform logits otherwise."""

    def forward(self, idx):
        same = (idx[:, None, :] == idx[None, :, :]).all(-1) & ~torch.eye(idx.shape[0], dtype=torch.bool)
        upcoming = F.one_hot(torch.cat([idx[:, 1:], idx[:, :1]], 1), VOCAB).float()  # each row's next token
        seen = torch.einsum("bc,ctv->btv", same.float(), upcoming)
        return 30.0 * (seen > 0).float()


def test_a_model_that_reads_the_next_token_off_a_padding_copy_is_flagged_by_causality(small_dataset, tmp_path):
    """40 windows: a batch of 32 and one of 8 fed with 24 copies. The copy-reader predicts those 8 rows almost
    perfectly (a real gain), but its twin is padded with copies of the altered rows, so the prefix moves."""
    result = score_model(CopyPeek(), small_dataset, tmp_path, eval_tokens=40 * SEQ_LEN)
    assert result.val_bpb < 7.0  # 8 bits on 32 rows, near 0 on the 8 padded ones: the attack gains
    assert result.status == "flagged" and result.causality == "fail", (result.status, result.reason)


def test_every_forward_call_draws_the_same_random_numbers():
    """The scorer reseeds before each call, so how many random numbers one batch drew is no message to the next."""
    from gpt.score import _log_probs

    class Noisy(torch.nn.Module):
        def forward(self, idx):
            return torch.rand(*idx.shape, 5)

    x = torch.zeros(2, 3, dtype=torch.long)
    first = _log_probs(Noisy(), x, 5)
    torch.rand(1000)  # what the first call's graph might have drawn on top
    assert torch.equal(first, _log_probs(Noisy(), x, 5))
