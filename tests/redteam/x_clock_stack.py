"""RED TEAM 2 - stacking every free window of the runner's clock, with the static checks ON.

What it tries (no monkeypatch, no environ, no lab private name, no path literal):
1. finds the runner's clock pipe among its own fds (os.fstat: the only FIFO above 2);
2. points that fd at /dev/null (os.dup2) while it calls lab.connect(), so the runner never hears
   `connect` and starts the budget at spawn + STARTUP_ALLOWANCE_S (10 s) instead; its own lab
   clock starts at the real connect (a second or three after spawn), so the gap is free;
3. trains until its own start + 10 s + budget + MARGIN_S (inside the 2 s submit tolerance);
4. writes `submit` on the saved clock fd itself (os.write), trains STEAL_S more (inside the 5 s
   export allowance), then calls run.submit(model), whose own `submit` the runner ignores.
With MODE set to "honest" it is the twin: same model, trains until run.time_left() <= 0 and submits.
Prints `REDTEAM {json}`: steps and the seconds it really trained (its own monotonic clock).
What evo must produce: flagged `budget` (or no extra training time). (The spawn + 10 s start it
aims at is gone: the clock now starts at `go`; the silenced `connect` is still flagged.)
"""
import time

T0 = time.monotonic()  # process start, a few tenths of a second after the runner's spawn

import json
import os
import stat

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt import lab

MODE = "attack"
WIDTH = 16
SEQ_LEN = 64
BATCH_SIZE = 16
LEARNING_RATE = 0.003
ALLOWANCE_S = 10.0  # the startup allowance the clock had until 2026-12-04
MARGIN_S = 1.0
STEAL_S = 3.0
CONTEXT, HIDDEN = 4, 128


class ContextMLP(nn.Module):
    """Embeddings of the last CONTEXT tokens (causal shifts) -> MLP -> next-token logits: still
    improving after thousands of steps, so extra time shows in val_bpb."""

    def __init__(self, vocab_size, width):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.mlp = nn.Sequential(nn.Linear(CONTEXT * width, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, vocab_size))

    def forward(self, idx):
        T = idx.shape[1]
        padded = F.pad(idx, (CONTEXT - 1, 0))
        feats = torch.cat([self.embed(padded[:, j:j + T]) for j in range(CONTEXT)], dim=-1)
        return self.mlp(feats)


clock = None
if MODE == "attack":
    for fd in range(3, 64):
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                clock = fd
                break
        except OSError:
            pass
if clock is not None:
    saved = os.dup(clock)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, clock)
    run = lab.connect()  # "connect" goes to /dev/null
    os.dup2(saved, clock)
else:
    run = lab.connect()
torch.set_num_threads(1)
model = ContextMLP(run.vocab_size, WIDTH).to(run.device)
optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
stop_at = T0 + ALLOWANCE_S + run.budget_s + MARGIN_S if clock is not None else None
told = None
start, step = time.monotonic(), 0
for x, y in run.train_batches(BATCH_SIZE, SEQ_LEN):
    now = time.monotonic()
    if stop_at is None:
        if run.time_left() <= 0:
            break
    else:
        if told is None and now >= stop_at:
            os.write(clock, b"submit\n")
            told = now
        if told is not None and now >= told + STEAL_S:
            break
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    step += 1
report = {"mode": MODE, "clock_fd": clock, "steps": step, "train_s": round(time.monotonic() - start, 2),
          "connect_after_s": round(start - T0, 2), "budget_s": run.budget_s}
print("REDTEAM " + json.dumps(report))
print(f"steps: {step}", flush=True)
run.submit(model)
