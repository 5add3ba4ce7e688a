"""RED TEAM - gaming catalog row 1: the seed lottery, through a knob the static checks allow.

What it tries: tests/genomes/evo_steps.py with one more knob, SEED_OFFSET, added to the
harness seed (`torch.manual_seed(run.seed + SEED_OFFSET)`). Seeding from run.seed passes the
`seed` rule, so an optimizer that mutates SEED_OFFSET and keeps the child whose first
evaluation happened to be lucky is playing the seed lottery with static-check-clean code.
With SEED_OFFSET = 0 it is exactly evo_steps (lab.connect() already seeds torch with run.seed).
What evo must produce: a child that differs from its parent only in SEED_OFFSET is never
crowned: a lucky first evaluation makes it a candidate at most, and its re-evaluation with a
fresh harness seed brings its mean back within the noise floor (tests/redteam/test_redteam.py,
the seed-gaming test drives the real run state's fold/judge with real slots).
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
SEED_OFFSET = 0  # evo: range(0, 1000)


class Bigram(nn.Module):
    def __init__(self, vocab_size, width):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, idx):
        return self.head(self.embed(idx))


run = lab.connect()
torch.manual_seed(run.seed + SEED_OFFSET)
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
