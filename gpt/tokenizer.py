"""Tokenizers. Bits per byte is computed from each target token's byte length, so any
tokenizer (byte-level today, BPE later) is scored on the same scale."""
from __future__ import annotations

import numpy as np


class ByteTokenizer:
    """Byte-level tokenizer: token id = UTF-8 byte value, vocabulary 256."""

    name = "byte"
    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self) -> np.ndarray:
        """Byte length of every token id (all 1 for bytes)."""
        return np.ones(self.vocab_size, dtype=np.int64)

    def to_json(self) -> dict:
        return {"name": self.name, "vocab_size": self.vocab_size}


def load_tokenizer(spec: dict) -> ByteTokenizer:
    """Rebuild the tokenizer described in a manifest."""
    if spec.get("name") == "byte":
        return ByteTokenizer()
    from gpt.errors import UserError

    raise UserError(f"unknown tokenizer {spec.get('name')!r} in the dataset manifest; re-run `evo prepare`")
