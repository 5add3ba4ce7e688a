"""gpt.bpe and `prepare(tokenizer="bpe:N")`: exact round trips, exact byte lengths, bits per byte on the byte scale."""
from __future__ import annotations

import math
import random
import re
import time

import numpy as np
import pytest
import torch

from gpt import data as data_mod
from gpt.bpe import SPLIT_PATTERN, BPETokenizer, parse_spec, train_bpe
from gpt.data import EVAL_SPLITS, canary_text, prepare, split_of
from gpt.errors import UserError
from gpt.score import bits_per_byte
from gpt.tokenizer import ByteTokenizer, load_tokenizer

from conftest import SMALL_FRACTIONS, SMALL_SECRET

ODD_TEXTS = [
    "",
    "a",
    "def f(x):\r\n\treturn x  # tab, CRLF\n",
    "naïve café — “quotes” → ∑ 数据 😀👍🏽 e\u0301 \u200b zero-width",
    " " * 300 + "x" + "\n" * 70 + "_" * 90 + "9" * 11,
    "snake_case_identifier_that_is_much_longer_than_forty_eight_characters_total = 1",
    "\x00\x01\x7f control \U0010ffff max code point",
]


def random_text(rng: random.Random, n: int) -> str:
    """Characters from ASCII, Latin-1, CJK, combining marks, emoji and whitespace."""
    pools = ["abcdefXYZ_0123456789", " \t\n\r", "()[]{}.,:;=+-*/#'\"", "éøßÆ", "数据模型", "\u0301\u0308",
             "😀🚀👍🏽"]
    return "".join(rng.choice(rng.choice(pools)) for _ in range(n))


@pytest.fixture(scope="module")
def tok(small_docs) -> BPETokenizer:
    """A 512-token BPE trained on the small corpus."""
    return BPETokenizer.train(small_docs, 512)


def test_parse_spec():
    assert parse_spec("byte") == ("byte", 256)
    assert parse_spec("bpe") == ("bpe", 8192)
    assert parse_spec("bpe:1024") == ("bpe", 1024)
    for bad in ("bpe:10", "bpe:70000", "bpe:x", "wordpiece", "byte:3"):
        with pytest.raises(ValueError):
            parse_spec(bad)


def test_chunks_cover_every_character():
    regex = re.compile(SPLIT_PATTERN)
    rng = random.Random(1)
    for text in ODD_TEXTS + [random_text(rng, 500) for _ in range(20)]:
        assert "".join(regex.findall(text)) == text


def test_round_trip_and_exact_byte_lengths(tok, small_docs):
    rng = random.Random(0)
    tb = tok.token_bytes()
    assert len(tb) == tok.vocab_size == 512 and (tb[:256] == 1).all() and (tb[256:] >= 2).all()
    for text in ODD_TEXTS + small_docs[:20] + [random_text(rng, 2000) for _ in range(10)]:
        ids = tok.encode(text)
        assert ids.dtype == np.uint16
        assert tok.decode(ids) == text
        assert int(tb[ids].sum()) == len(text.encode("utf-8"))
        assert tok.decode_bytes(ids) == text.encode("utf-8")


def test_training_is_deterministic_and_compresses(tok, small_docs):
    again = BPETokenizer.train(small_docs, 512)
    assert again.merges == tok.merges
    text = "".join(small_docs[-20:])
    ratio = len(text.encode()) / len(tok.encode(text))
    assert ratio > 1.7, ratio  # source code compresses well even with 256 merges (about 2x)
    # a sample too small for the requested vocabulary stops when no pair repeats
    assert len(train_bpe(["abcabc"], 1000)) < 5


def test_saved_merges_rebuild_the_same_tokenizer(tok, tmp_path):
    digest = tok.save(tmp_path / "bpe.json")
    loaded = BPETokenizer.load(tmp_path / "bpe.json", digest)
    assert loaded.merges == tok.merges and loaded.vocab_size == tok.vocab_size
    with pytest.raises(ValueError, match="sha256"):
        BPETokenizer.load(tmp_path / "bpe.json", "0" * 64)


def test_bits_per_byte_matches_byte_level_on_a_known_answer(tok, small_docs):
    """A known answer both tokenizations must reproduce through the scorer's bits_per_byte.

    Byte level: a unigram model q over bytes (the text's byte frequencies, add-one smoothed)
    has code length sum_i -log2 q(b_i), so its bits per byte is that sum over the byte count.
    Token level: at each position, give the actual next token t the probability
    P(t) = prod_{b in bytes(t)} q(b) (what the byte model gives that exact byte string) and
    spread 1 - P(t) evenly over the other tokens: a proper distribution at every position
    whose code length for the text is, token by token, exactly the byte model's. So both
    must come out at the same number, equal to the closed form, if and only if the scorer
    divides by the exact UTF-8 byte length of every target token (counting characters, or
    dropping bytes of merged tokens, would break the equality: the text has multi-byte
    characters). A one-byte sentinel (\\x01, then a newline: its own chunk and token) leads the text, so the
    first target, never scored, is the same byte under both tokenizations; one window
    covers the rest."""
    text = "\x01\n" + "".join(small_docs[:8]) + "naïve café → 数据 😀\n"
    raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    q = np.bincount(raw, minlength=256).astype(np.float64) + 1.0
    q /= q.sum()
    expected = float(-np.log2(q[raw[1:]]).sum() / (len(raw) - 1))

    byte_ids = ByteTokenizer().encode(text)
    log_q = torch.tensor(np.log(q), dtype=torch.float32)

    def byte_model(x):
        return log_q.expand(*x.shape, 256)

    bpe_ids = tok.encode(text)
    assert bpe_ids[0] == 1 and tok.token_bytes()[bpe_ids[0]] == 1
    pieces = [tok.decode_bytes([i]) for i in range(tok.vocab_size)]
    log_p = np.array([np.log(q[list(p)]).sum() for p in pieces])  # log prod_b q(b) per token

    def oracle(x):
        assert torch.equal(x[0], torch.from_numpy(bpe_ids[:-1].astype(np.int64)))
        target = torch.from_numpy(bpe_ids[1:].astype(np.int64))
        p = torch.from_numpy(log_p[bpe_ids[1:]]).exp()
        rest = torch.log((1 - p) / (tok.vocab_size - 1))
        logits = rest[:, None].expand(len(target), tok.vocab_size).clone()
        logits[torch.arange(len(target)), target] = torch.from_numpy(log_p[bpe_ids[1:]])
        return logits.float()[None].expand(len(x), -1, -1)  # the scorer feeds full batches: the row, padded

    n_b, n_t = len(byte_ids) - 1, len(bpe_ids) - 1
    got_bytes = bits_per_byte(byte_model, byte_ids, ByteTokenizer().token_bytes(), n_b, n_b, 256, "cpu")
    got_bpe = bits_per_byte(oracle, bpe_ids, tok.token_bytes(), n_t, n_t, tok.vocab_size, "cpu")
    assert n_t < 0.7 * n_b  # the BPE really merges
    assert got_bytes == pytest.approx(expected, rel=1e-6)
    assert got_bpe == pytest.approx(expected, rel=1e-5)


@pytest.fixture(scope="module")
def bpe_dataset(tmp_path_factory, small_source):
    return prepare(small_source, root=tmp_path_factory.mktemp("bpe-data"), fractions=SMALL_FRACTIONS,
                   secret=SMALL_SECRET, tokenizer="bpe:512")


def test_prepare_with_bpe(bpe_dataset, small_dataset, small_docs, small_source, tmp_path, monkeypatch):
    m = bpe_dataset.manifest
    assert m["tokenizer"]["name"] == "bpe" and m["tokenizer"]["vocab_size"] == 512
    assert (bpe_dataset.path / m["tokenizer"]["path"]).parent == bpe_dataset.train_path.parent  # in train/
    assert bpe_dataset.path != small_dataset.path  # the tokenizer is part of the dataset key
    tok = bpe_dataset.tokenizer
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == 512
    with pytest.raises(UserError):
        load_tokenizer(m["tokenizer"])  # a BPE tokenizer needs its dataset folder
    # the train split decodes to exactly the train documents, in order
    train_docs = [d for d in small_docs if split_of(d, SMALL_FRACTIONS, SMALL_SECRET) == "train"]
    assert tok.decode(bpe_dataset.tokens("train")) == "".join(train_docs)
    assert m["bytes"] == small_dataset.manifest["bytes"]  # same documents, same split sizes in bytes
    assert m["documents"] == small_dataset.manifest["documents"]
    # the merges are learned from train documents only
    seen = []
    real_train = BPETokenizer.train
    spy = classmethod(lambda cls, texts, v: seen.extend(texts) or real_train(texts, v))
    monkeypatch.setattr(BPETokenizer, "train", spy)
    prepare(small_source, root=tmp_path, fractions=SMALL_FRACTIONS, secret=SMALL_SECRET, tokenizer="bpe:300")
    train_set = set(train_docs)
    assert seen and all(any(d.startswith(s) for d in train_set) for s in seen)


def test_bpe_canary_spans_are_exact_and_text_tokens_are_the_documents(bpe_dataset, small_docs):
    """Every text is encoded on its own, so a canary's tokens are exactly those of its text and
    cutting the spans out leaves exactly the split's documents, even though BPE merges across
    what would otherwise be document/canary boundaries."""
    tok, m = bpe_dataset.tokenizer, bpe_dataset.manifest
    for split in EVAL_SPLITS:
        tokens = np.asarray(bpe_dataset.tokens(split))
        for start, end, index in bpe_dataset.canary_spans(split):
            text = canary_text(m["canaries"][split][index])
            assert tok.decode(tokens[start:end]) == text and np.array_equal(tokens[start:end], tok.encode(text))
        docs = [d for d in small_docs if split_of(d, SMALL_FRACTIONS, SMALL_SECRET) == split]
        text_tokens = bpe_dataset.text_tokens(split)
        assert len(text_tokens) == m["scored_tokens"][split] < m["tokens"][split]
        assert tok.decode(text_tokens) == "".join(docs)
        assert np.array_equal(text_tokens, np.concatenate([tok.encode(d) for d in docs]))


def test_explicit_byte_tokenizer_keeps_the_default_dataset(small_dataset, small_source):
    again = prepare(small_source, root=small_dataset.path.parent, fractions=SMALL_FRACTIONS, secret=SMALL_SECRET,
                    tokenizer="byte")
    assert again.path == small_dataset.path
    with pytest.raises(UserError, match="tokenizer"):
        prepare(small_source, root=small_dataset.path.parent, fractions=SMALL_FRACTIONS, secret=SMALL_SECRET,
                tokenizer="bpe:3")


def test_parallel_tokenization_gives_the_same_dataset(bpe_dataset, small_source, tmp_path, monkeypatch):
    """Large BPE splits are tokenized in forked workers; the bytes on disk must not change."""
    monkeypatch.setattr(data_mod, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(data_mod, "_workers", lambda: 2)
    par = prepare(small_source, root=tmp_path, fractions=SMALL_FRACTIONS, secret=SMALL_SECRET, tokenizer="bpe:512")
    assert par.manifest["hashes"] == bpe_dataset.manifest["hashes"]
    assert par.manifest["canary_spans"] == bpe_dataset.manifest["canary_spans"]
    assert par.path.name == bpe_dataset.path.name


def test_canary_scoring_with_bpe(bpe_dataset):
    """Canaries of different BPE token lengths are scored; a uniform model gives each canary
    (scored tokens * log2 V) / (their bytes), where the scored tokens are those of
    encode(prefix + canary) that end past the prefix (as the canary appears in the data)."""
    from gpt.data import CANARY_PREFIX
    from gpt.score import canary_bits

    tok = bpe_dataset.tokenizer
    canaries = bpe_dataset.manifest["canaries"]["control"]
    V = tok.vocab_size
    assert len({len(tok.encode(c)) for c in canaries}) > 1  # the case that used to crash

    def uniform(x):
        return torch.zeros(*x.shape, V)

    bits = canary_bits(uniform, tok, canaries, V, "cpu")
    context = "\n" + CANARY_PREFIX
    want = []
    for c in canaries:
        ids = tok.encode(context + c)
        lengths = tok.token_bytes()[ids]
        scored = np.cumsum(lengths)[1:] > len(context.encode())
        want.append(scored.sum() * math.log2(V) / lengths[1:][scored].sum())
    assert np.allclose(bits, want, rtol=1e-6)


def test_encode_speed(tok, small_docs):
    """Cold (empty cache) and warm encode throughput; printed for the record, loosely bounded."""
    text = "".join(small_docs)
    fresh = BPETokenizer(tok.merges)
    t0 = time.perf_counter()
    fresh.encode(text)
    cold = len(text) / (time.perf_counter() - t0) / 1e6
    t0 = time.perf_counter()
    fresh.encode(text)
    warm = len(text) / (time.perf_counter() - t0) / 1e6
    print(f"BPE-512 encode: {cold:.1f} MB/s cold, {warm:.1f} MB/s warm")
    assert warm > 0.5
