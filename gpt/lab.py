"""The genome contract: the only API a genome uses to talk to the harness.

    from gpt import lab
    run = lab.connect()          # slot spec from the harness; standalone: a local default run
    run.budget_s, run.device, run.seed, run.vocab_size
    run.train_batches(batch_size, seq_len)   # endless (x, y) int64 batches of the train split
    run.time_left()              # seconds left on the harness clock (it starts with the genome's code)
    run.submit(model)            # model(idx[B, T]) -> logits[B, T, vocab_size]; under the harness
                                 # this ends the process (the slot is over), so print before it

The harness owns the data, the seed, the clock and the scoring. A slot spec names the
train split only: the genome never learns where the evaluation splits live.

Everything here runs inside the genome's process and is untrusted: a genome can patch any
of it. So nothing this module measures is believed. `connect()` and `submit()` only *tell*
the runner (one word on a pipe the runner owns); the runner timestamps those words itself,
and `time_left()` is a courtesy copy of the runner's deadline. The artifact `submit()`
writes is data (gpt.artifact), checked by the harness before anything reads it.
"""
from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gpt import artifact

from gpt.protocol import (  # noqa: F401  (the wire between this module and the runner)
    CLOCK_FD_ENV, DEFAULT_EVAL_SEQ_LEN, EVAL_BATCH, EXPORT_ERROR_NAME, SPEC_ENV, STANDALONE_BUDGET_S,
    SlotSpec)


class ExportError(RuntimeError):
    """The submitted model cannot be exported; the message says what the genome must change."""


class Run:
    """One training run inside a slot."""

    def __init__(self, spec: SlotSpec):
        self._spec = spec
        self._connected_at = time.monotonic()
        spent = time.time() - spec.clock_started_at if spec.clock_started_at else 0.0  # the runner's clock started at go
        self._deadline = self._connected_at + spec.budget_s - max(0.0, spent)
        self._train = np.memmap(spec.train_path, dtype=np.uint16, mode="r")
        if spec.threads > 0:
            torch.set_num_threads(spec.threads)
        random.seed(spec.seed)
        np.random.seed(spec.seed % 2**32)
        torch.manual_seed(spec.seed)

    budget_s = property(lambda self: self._spec.budget_s)
    device = property(lambda self: self._spec.device)
    seed = property(lambda self: self._spec.seed)
    vocab_size = property(lambda self: self._spec.vocab_size)
    eval_seq_len = property(lambda self: self._spec.eval_seq_len, doc="longest sequence the scorer feeds the model")

    def time_left(self) -> float:
        """Seconds left on the harness clock (it started when the genome's code did)."""
        return self._deadline - time.monotonic()

    def train_batches(self, batch_size: int, seq_len: int):
        """Endless iterator of (x, y) int64 tensors on `device`, train split only, order seeded by `seed`."""
        if seq_len + 1 >= len(self._train):
            raise ValueError(f"seq_len {seq_len} is longer than the train split ({len(self._train)} tokens)")
        rng = np.random.default_rng([self._spec.seed, 0xBA7C])
        offsets = np.arange(seq_len + 1)
        pin = self._spec.device.startswith("cuda")
        while True:
            starts = rng.integers(0, len(self._train) - seq_len - 1, batch_size)
            chunk = torch.from_numpy(self._train[starts[:, None] + offsets].astype(np.int64))
            if pin:
                chunk = chunk.pin_memory().to(self._spec.device, non_blocking=True)
            else:
                chunk = chunk.to(self._spec.device)
            yield chunk[:, :-1], chunk[:, 1:]

    def submit(self, model: torch.nn.Module) -> Path:
        """Export the model with torch.export and hand it to the harness for scoring."""
        tell_harness("submit")  # the runner's clock stops here; the export must follow promptly
        out = Path(self._spec.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        try:
            program = export_model(model, self._spec.eval_seq_len, self._spec.device)
            artifact.save(program, out)
        except ExportError as exc:
            (out / EXPORT_ERROR_NAME).write_text(str(exc))
            raise
        except TypeError as exc:  # a non-tensor constant: the artifact would need a pickle
            (out / EXPORT_ERROR_NAME).write_text(str(exc))
            raise ExportError(str(exc)) from None
        # Under the harness the slot is over: end the process now. Tearing down an interpreter
        # that imported torch's export stack takes seconds, and they would count as slot overhead.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def export_model(model: torch.nn.Module, eval_seq_len: int, device: str):
    """torch.export the model at the one shape the scorer feeds it, [EVAL_BATCH, eval_seq_len].
    A static shape: exporting with symbolic batch and sequence dimensions took 4-5 times as long
    (about 1 s of a CPU slot's overhead) for shapes the scorer never uses."""
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    if not isinstance(model, torch.nn.Module):
        raise ExportError(f"submit() needs a torch.nn.Module, got {type(model).__name__}")
    model.eval()
    example = torch.zeros(EVAL_BATCH, eval_seq_len, dtype=torch.long, device=device)
    try:
        with torch.no_grad():
            return torch.export.export(model, (example,))
    except Exception as exc:
        raise ExportError(
            f"the model could not be exported with torch.export ({type(exc).__name__}: {str(exc)[:2000]}).\n"
            "The genome must change its model so that forward(idx) is traceable: take one LongTensor "
            f"[B, T] ({EVAL_BATCH} x {eval_seq_len} when scored), return logits [B, T, vocab_size], avoid "
            "Python control flow on tensor values and data-dependent shapes, and size position tables "
            f"to at least {eval_seq_len}."
        ) from exc


def tell_harness(word: str) -> None:
    """One word to the runner on its clock pipe; the runner, not this process, notes the time."""
    fd = os.environ.get(CLOCK_FD_ENV)
    if fd:
        try:
            os.write(int(fd), f"{word}\n".encode())
        except (OSError, ValueError):
            pass


def _run_by_hand() -> None:
    """`python genome.py` outside the harness: run this very script through the full harness (a
    sandboxed slot, the runner's clock, the trusted scorer), print the scores, and exit. A number
    printed here is measured exactly as `evo eval` measures it."""
    from gpt.devices import default_device
    from gpt.runner import run_by_hand

    sys.exit(run_by_hand(Path(sys.argv[0]).resolve(), budget_s=float(os.environ.get("EVO_BUDGET", STANDALONE_BUDGET_S)),
                         data=os.environ.get("EVO_DATA") or None, device=default_device()))


EXPORT_MODULES = ("torch._dynamo", "torch.export", "torch._export.non_strict_utils", "torch._functorch.aot_autograd",
                  "torch.fx.experimental.symbolic_shapes")
_RUN: Run | None = None


def _import_export_modules() -> None:
    """Import torch.export's machinery before the clock starts, so the first export does not
    spend a second or more importing it after the budget has run out. (Not in a background
    thread: that races a torch.compile in the genome and steals the GIL from its first steps.)"""
    import importlib

    for name in EXPORT_MODULES:
        importlib.import_module(name)


def connect() -> Run:
    """Read the slot spec the harness gives; without one, start a local default run.
    There is one run per process: a second call returns the same run and the same clock."""
    global _RUN
    if _RUN is None:
        path = os.environ.get(SPEC_ENV)
        if not path:
            _run_by_hand()
        spec = SlotSpec.read(path)
        _import_export_modules()
        tell_harness("connect")
        _RUN = Run(spec)
    return _RUN
