"""RED TEAM - gaming catalog row 8: timer tricks, work outside the timed region (before connect).

What it tries (written when lab.connect() started the budget clock and the runner let startup
before connect() take up to 10 s for free; the clock now starts at `go`, so there is no allowance
left to turn into training time): it connects once to get train batches, trains ignoring that run's
clock, and every CHUNK steps calls lab.connect() AGAIN to read how much a fresh run would get.
While the pre-connect time is inside the allowance a fresh run still gets the full budget; once
the allowance is spent it shrinks. When a fresh run would get less than KEEP of the budget, it
keeps that run, trains until its time_left() reaches zero and submits through it: to the budget
probe it looks punctual. Static-check clean (lab.connect is the contract).
Prints `REDTEAM {json}`: steps before and after the last connect and the time_left probes.
What evo must produce, and does: one clock, from `go`: a second connect returns the same run, and
all its training fits the one budget.
"""
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt import lab

WIDTH = 16  # evo: choice(8, 16, 32)
SEQ_LEN = 64  # evo: choice(32, 64)
BATCH_SIZE = 16  # evo: range(4, 64)
LEARNING_RATE = 0.03
CHUNK = 50
KEEP = 0.9


class Bigram(nn.Module):
    def __init__(self, vocab_size, width):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, idx):
        return self.head(self.embed(idx))


first = lab.connect()
torch.set_num_threads(1)
model = Bigram(first.vocab_size, WIDTH).to(first.device)
optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
batches = first.train_batches(BATCH_SIZE, SEQ_LEN)


def train_step():
    x, y = next(batches)
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


started = time.monotonic()
pre_steps, probes = 0, []
while True:
    for _ in range(CHUNK):
        train_step()
        pre_steps += 1
    run = lab.connect()  # a fresh run: what would the clock give now?
    probes.append(round(run.time_left(), 3))
    if probes[-1] < KEEP * run.budget_s:
        break
post_steps = 0
while run.time_left() > 0:
    train_step()
    post_steps += 1
report = {"pre_steps": pre_steps, "post_steps": post_steps, "pre_seconds": round(time.monotonic() - started, 3),
          "n_probes": len(probes), "first_probes": probes[:3], "last_probes": probes[-3:], "budget_s": run.budget_s}
print("REDTEAM " + json.dumps(report))
print(f"steps: {pre_steps + post_steps}", flush=True)
run.submit(model)
