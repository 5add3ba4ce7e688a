"""The wire between the genome's side (gpt.lab) and the harness (gpt.runner, gpt.clock): the slot
spec the runner writes, the environment variables that point at it and at the clock pipe, and the
allowances both sides agree on. Constants and one dataclass, no behaviour: both sides import it,
neither imports the other for it."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

SPEC_ENV = "EVO_SLOT_SPEC"
CLOCK_FD_ENV = "EVO_CLOCK_FD"  # the write end of the runner's clock pipe
EXPORT_ERROR_NAME = "export_error.txt"
STANDALONE_BUDGET_S = 30.0
DEFAULT_EVAL_SEQ_LEN = 256
# Rows per scorer call: every batch the scorer feeds has exactly this many rows (short ones are
# padded), so the harness exports the model at this one shape and a probe cannot be told by its size.
EVAL_BATCH = 32


@dataclass(frozen=True)
class SlotSpec:
    """Facts of one slot, written by the harness and read by `connect()`."""

    budget_s: float
    device: str
    seed: int
    vocab_size: int
    train_path: str
    out_dir: str
    eval_seq_len: int = DEFAULT_EVAL_SEQ_LEN
    threads: int = 0
    clock_started_at: float = 0.0  # wall clock when the runner said `go`: the budget runs from then (0: standalone)

    @classmethod
    def read(cls, path: str | os.PathLike) -> "SlotSpec":
        return cls(**json.loads(Path(path).read_text()))

    def write(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1))
