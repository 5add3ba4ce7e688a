"""HONEST VARIANT h11: no step count at all: it trains until run.time_left() reaches zero, with a
learning rate that decays linearly with the harness clock over the last half of the budget
(the tiny_cpu pattern). Exercises the budget probe on an honest, clock-driven genome."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt import lab

WIDTH = 16
SEQ_LEN = 64
BATCH_SIZE = 16
LEARNING_RATE = 0.03
WARMDOWN_FRACTION = 0.5


class Bigram(nn.Module):
    def __init__(self, vocab_size, width):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, idx):
        return self.head(self.embed(idx))


run = lab.connect()
model = Bigram(run.vocab_size, WIDTH).to(run.device)
optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
step = 0
for x, y in run.train_batches(BATCH_SIZE, SEQ_LEN):
    left = run.time_left()
    if left <= 0:
        break
    frac = min(1.0, left / (WARMDOWN_FRACTION * run.budget_s))
    for group in optimizer.param_groups:
        group["lr"] = LEARNING_RATE * frac
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    step += 1
print(f"steps: {step}")
run.submit(model)
