"""The reader of a prepared dataset folder: its manifest, split files, canary spans and tokenizer.

This module exists so that code which only reads prepared data (scoring, the runner, the
sandbox set-up) needs none of the preparation machinery; `gpt.data.prepare` writes the folder.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpt.errors import UserError
from gpt.tokenizer import load_tokenizer


@dataclass(frozen=True)
class Dataset:
    """A prepared dataset on disk."""

    path: Path

    @property
    def manifest(self) -> dict:
        path = self.path / "manifest.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"the prepared dataset {self.path} is gone (no manifest.json: the data cache was cleaned, "
                            "moved, or another EVO_DATA_DIR is set); point EVO_DATA_DIR at the cache that holds it, "
                            "or prepare it again with `evo prepare --data SOURCE` (its splits are then new: scores "
                            "do not compare with older ones unless the old --secret is given)") from None
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {path} ({exc}): the dataset is damaged; remove {self.path} and prepare it "
                            "again with `evo prepare --data SOURCE`") from None

    @property
    def train_path(self) -> Path:
        return self.path / "train" / "train.bin"

    def split_path(self, split: str) -> Path:
        return self.train_path if split == "train" else self.path / "eval" / f"{split}.bin"

    def tokens(self, split: str) -> np.ndarray:
        """Every token of the split file, planted canaries included."""
        return np.memmap(self.split_path(split), dtype=np.uint16, mode="r")

    def canary_spans(self, split: str) -> np.ndarray:
        """[n, 3] int64 rows (start, end, canary index), token offsets into the split file, end
        exclusive, sorted: where each planted canary text lies. Empty for train."""
        if split == "train":
            return np.zeros((0, 3), np.int64)
        spans = self.manifest.get("canary_spans")
        if spans is None:
            raise UserError(f"dataset {self.path} was prepared by an older evo (no canary spans in its manifest); "
                            f"prepare it again (evo prepare)")
        return np.asarray(spans[split], dtype=np.int64).reshape(-1, 3)

    def text_tokens(self, split: str) -> np.ndarray:
        """The split's documents only: its tokens with every canary span cut out. This is the
        stream to score; canaries stay in the files so that a model trained on an eval split
        file has seen them. For train it is just the tokens."""
        tokens = self.tokens(split)
        spans = self.canary_spans(split)
        if not len(spans):
            return tokens
        starts = np.concatenate([[0], spans[:, 1]])
        ends = np.concatenate([spans[:, 0], [len(tokens)]])
        return np.concatenate([tokens[a:b] for a, b in zip(starts, ends)])

    @property
    def tokenizer(self):
        return load_tokenizer(self.manifest["tokenizer"], self.path)
