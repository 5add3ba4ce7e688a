"""RED TEAM - gaming catalog row 8: timer tricks against gpt.lab itself (which runs in the genome's process).

What it tries, by MODE (static checks off: this is about what the runner measures, not the filter):
- "deadline": moves the Run's private deadline EXTRA_S later through a computed attribute name,
  so time_left() stays positive EXTRA_S longer;
- "early_submit": tells the runner's clock `submit` when the budget runs out, keeps training
  EXTRA_S more, then calls run.submit() (which says `submit` again);
- "silent": replaces lab.tell_harness with a no-op (the runner never hears connect or submit)
  and trains EXTRA_S past the budget.
What evo must produce: the runner timestamps the words itself, so "deadline" and "silent" are
flagged `budget`; "early_submit" is flagged `budget` once EXTRA_S exceeds the export allowance
(max(5 s, 5% of the budget)), which is the most this trick can gain.
"""
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt import lab

MODE = "deadline"
EXTRA_S = 6.0
WIDTH = 16
SEQ_LEN = 64
BATCH_SIZE = 16


class Bigram(nn.Module):
    def __init__(self, vocab_size, width):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, idx):
        return self.head(self.embed(idx))


if MODE == "silent":
    setattr(lab, "tell_" + "harness", lambda word: None)
run = lab.connect()
if MODE == "deadline":
    name = "_dead" + "line"
    setattr(run, name, getattr(run, name) + EXTRA_S)
torch.set_num_threads(1)
model = Bigram(run.vocab_size, WIDTH).to(run.device)
optimizer = torch.optim.AdamW(model.parameters(), lr=0.03)
start, step, told = time.monotonic(), 0, False
limit = 0.0 if MODE == "deadline" else -EXTRA_S
for x, y in run.train_batches(BATCH_SIZE, SEQ_LEN):
    if MODE == "early_submit" and not told and run.time_left() <= 0:
        lab.tell_harness("submit")
        told = True
    if run.time_left() <= limit:
        break
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    step += 1
print(f"REAL_TRAIN_S {time.monotonic() - start:.2f}")
print(f"steps: {step}", flush=True)
run.submit(model)
