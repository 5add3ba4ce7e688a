"""Tokenizers. Bits per byte is computed from each target token's byte length, so any
tokenizer (byte-level, or BPE from gpt.bpe) is scored on the same scale."""
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


def load_tokenizer(spec: dict, folder=None):
    """Rebuild the tokenizer described in a manifest. `folder` is the dataset folder: a BPE
    tokenizer's merges live in a file there (`spec["path"]`, relative to it)."""
    if spec.get("name") == "byte":
        return ByteTokenizer()
    from gpt.errors import UserError

    if spec.get("name") == "bpe":
        from pathlib import Path

        from gpt.bpe import BPETokenizer

        if folder is None:
            raise UserError("a BPE tokenizer is loaded from its dataset folder; use Dataset(path).tokenizer")
        path = Path(folder) / spec["path"]
        try:
            tok = BPETokenizer.load(path, spec.get("sha256"))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load the BPE tokenizer of dataset {folder}: {exc}; re-run `evo prepare`")
        if tok.vocab_size != spec.get("vocab_size"):
            raise UserError(f"BPE tokenizer {path} has {tok.vocab_size} tokens, the manifest says "
                            f"{spec.get('vocab_size')}; re-run `evo prepare`")
        return tok
    raise UserError(f"unknown tokenizer {spec.get('name')!r} in the dataset manifest; re-run `evo prepare`")
