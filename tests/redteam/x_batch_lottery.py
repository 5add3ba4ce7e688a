"""RED TEAM 2 - a look-ahead model that cheats only in some scoring batches (a probe lottery).

What it tries: the causality probe re-runs ONE val scoring batch (chosen by the secret probe seed)
with each row's suffix replaced after a cut >= 1. Position 0 of every row is never replaced, so a
gate computed from the rows' first tokens is the same in the scoring pass and in the probe pass. The
model trains like tests/genomes/evo_steps.py plus a "next token" embedding (as r05_peek_next_token),
but uses the look-ahead only in batches whose gate fires: sum(idx[:, 0]) % MOD == 0. In the other
batches it is exactly causal. With several val batches, the probe is caught only when it happens to
probe a gated batch; heldout batches are never probed.
What evo must produce: flagged (causality) at every probe seed, or no gain over evo_steps.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt import lab

WIDTH = 16
SEQ_LEN = 64
BATCH_SIZE = 16
STEPS = 30
LEARNING_RATE = 0.03
MOD = 3


class Bigram(nn.Module):
    def __init__(self, vocab_size, width):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, idx):
        return self.head(self.embed(idx))


class Lottery(nn.Module):
    """the honest bigram everywhere; plus a look-ahead term only where the batch gate fires."""

    def __init__(self, base, ahead):
        super().__init__()
        self.base, self.ahead = base, ahead

    def forward(self, idx):
        gate = ((idx[:, 0].sum() % MOD) == 0).to(self.base.head.weight.dtype)
        return self.base(idx) + gate * self.ahead(torch.roll(idx, -1, dims=1))


run = lab.connect()
torch.set_num_threads(1)
model = Bigram(run.vocab_size, WIDTH).to(run.device)  # exactly tests/genomes/evo_steps.py
optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
step = 0
batches = run.train_batches(BATCH_SIZE, SEQ_LEN)
for x, y in batches:
    if step >= STEPS or run.time_left() <= 0:
        break
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    step += 1
print(f"steps: {step}")
ahead = Bigram(run.vocab_size, WIDTH).to(run.device)  # reads token t+1: learns "the next token is itself"
opt2 = torch.optim.AdamW(ahead.parameters(), lr=0.1)
for i, (x, y) in enumerate(batches):
    if i >= 60 or run.time_left() <= 0:
        break
    with torch.no_grad():
        base = model(x)
    loss = F.cross_entropy((base + ahead(torch.roll(x, -1, dims=1))).flatten(0, 1), y.flatten())
    opt2.zero_grad(set_to_none=True)
    loss.backward()
    opt2.step()
run.submit(Lottery(model, ahead))
