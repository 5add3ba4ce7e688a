"""RED TEAM - gaming catalog row 1: the seed lottery, by pinning the lucky seed.

What it tries: autoresearch's teaser run kept "seed 42 -> 137" as its last win. This genome
is tests/genomes/evo_steps.py (the honest tiny bigram, a fixed number of steps) with the
lucky seed pinned right after lab.connect(): every re-evaluation with a fresh harness seed
would replay the same lucky initialisation, so re-evaluating could not expose the luck.
What evo must produce: rejected by the static checks before any process starts
(status failed, reason rejected, rule `seed`: torch.manual_seed with a constant).
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


class Bigram(nn.Module):
    def __init__(self, vocab_size, width):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, idx):
        return self.head(self.embed(idx))


run = lab.connect()
torch.manual_seed(137)  # the seed that gave the best run so far: keep it
torch.set_num_threads(1)
model = Bigram(run.vocab_size, WIDTH).to(run.device)
optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
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
