"""RED TEAM - gaming catalog row 8: timer tricks, training on inside the kill grace.

What it tries: trains like tests/genomes/evo_tiny.py until run.time_left() reaches zero,
then keeps training EXTRA_S more seconds (the harness kills a slot only at budget + grace,
so a few seconds more look free), then submits through run.submit().
What evo must produce: status flagged, reason `budget` (the budget probe: submitted more than
max(2 s, 5% of the budget) after time_left() hit zero; overrun_s in probes.budget).
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
EXTRA_S = 3.0  # evo: range(0.0, 10.0)


class Bigram(nn.Module):
    def __init__(self, vocab_size, width):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, idx):
        return self.head(self.embed(idx))


run = lab.connect()
torch.set_num_threads(1)
model = Bigram(run.vocab_size, WIDTH).to(run.device)
optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
step = 0
for x, y in run.train_batches(BATCH_SIZE, SEQ_LEN):
    if run.time_left() <= -EXTRA_S:
        break
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    step += 1
print(f"steps: {step}", flush=True)
run.submit(model)
