"""evo_steps: a byte bigram model that trains a fixed number of steps on one thread, for evolution
tests whose scores must not depend on how loaded the machine is.

It stops after STEPS steps, which take about a second even on a busy two-core machine, so with a
budget of several seconds the same harness seed gives the same val_bpb whatever the load (a busy
machine only makes the slot take longer). One thread: tiny ops on contended cores are far slower
with OpenMP threads waiting for each other. The UPPER_CASE knobs are what evo's knob operators mutate.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt import lab

WIDTH = 16  # evo: choice(8, 16, 32)
SEQ_LEN = 64  # evo: choice(32, 64)
BATCH_SIZE = 16  # evo: range(4, 64)
STEPS = 30  # evo: range(10, 60)
LEARNING_RATE = 0.03
WEIGHT_DECAY = 0.0  # evo: range(0.0, 0.1)


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
optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
step = 0
for x, y in run.train_batches(BATCH_SIZE, SEQ_LEN):
    if step >= STEPS or run.time_left() <= 0:
        break
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    step += 1
print(f"steps: {step}")
run.submit(model)
