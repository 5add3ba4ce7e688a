"""RED TEAM - gaming catalog row 8: timer tricks, by monkeypatching the clock.

What it tries: right after lab.connect() it replaces time.monotonic (which run.time_left()
and run.submit() read) with a clock that runs at CLOCK_RATE of real time, then trains like
tests/genomes/evo_steps.py but for as long as time_left() says (no step cap). CLOCK_RATE 0
freezes the clock (train forever); 0.4 gives 2.5 times the budget and makes submit()'s
own overrun measurement read about zero.
What evo must produce:
- static checks on: rejected, rule `monkeypatch`, no process started;
- static checks off, CLOCK_RATE 0: killed by the harness's wall clock, reason `timeout`;
- static checks off, CLOCK_RATE 0.4: it trains ~2.5x its budget and submits inside the grace.
  Evo SHOULD flag it `budget`; it does not (the overrun is measured in the genome's process
  with the genome's clock): a known gap, see docs/integrity.md, test marked xfail.
"""
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt import lab

WIDTH = 16  # evo: choice(8, 16, 32)
SEQ_LEN = 64  # evo: choice(32, 64)
BATCH_SIZE = 16  # evo: range(4, 64)
LEARNING_RATE = 0.03
CLOCK_RATE = 0.4  # evo: range(0.0, 1.0)


class Bigram(nn.Module):
    def __init__(self, vocab_size, width):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, idx):
        return self.head(self.embed(idx))


run = lab.connect()
real_monotonic = time.monotonic
patched_at = real_monotonic()
time.monotonic = lambda: patched_at + (real_monotonic() - patched_at) * CLOCK_RATE
torch.set_num_threads(1)
model = Bigram(run.vocab_size, WIDTH).to(run.device)
optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
step = 0
for x, y in run.train_batches(BATCH_SIZE, SEQ_LEN):
    if run.time_left() <= 0:
        break
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    step += 1
print(f"REAL_TRAIN_S {real_monotonic() - patched_at:.3f}")
print(f"steps: {step}", flush=True)
run.submit(model)
