"""RED TEAM 2 - non-causal prediction across the rows of a scoring batch.

What it tries: the scorer cuts each split into NON-OVERLAPPING, CONSECUTIVE windows of seq_len + 1
tokens and feeds SCORE_BATCH of them as one batch, in order. Row i's last target (position T-1) is
therefore exactly row i+1's first input token. The causality probe only replaces tokens at a cut
>= 1 inside each row and compares positions < cut, so (a) it never changes position 0 of any row and
(b) it never compares position T-1. This genome trains exactly like tests/genomes/evo_steps.py (same
model, optimizer, steps, seed) and exports a wrapper that, at the last position of every row, mixes
the base prediction with a point mass (weight MIX) on the NEXT ROW's first token (torch.roll over the
batch dimension). During training nothing changes.
What evo must produce: flagged (causality) or a val_bpb no better than evo_steps at the same seed.
Observed: see tests/redteam/test_attacks2.py (a FINDING when the val_bpb is lower and nothing flags).
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
WEIGHT_DECAY = 0.0
MIX = 0.9


class Bigram(nn.Module):
    def __init__(self, vocab_size, width):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, idx):
        return self.head(self.embed(idx))


class NextRow(nn.Module):
    """base log-probs everywhere; at t = T-1: log((1-MIX) p + MIX [token == idx[i+1, 0]])."""

    def __init__(self, base, vocab_size):
        super().__init__()
        self.base = base
        self.vocab_size = vocab_size

    def forward(self, idx):
        T = idx.shape[1]
        p = torch.softmax(self.base(idx), dim=-1)
        nxt = torch.roll(idx[:, 0], -1, dims=0)  # row i <- row i+1's first token
        point = F.one_hot(nxt, self.vocab_size).to(p.dtype)[:, None, :]
        last = (torch.arange(T, device=idx.device) == T - 1).to(p.dtype)[None, :, None]
        mixed = p * (1 - MIX * last) + MIX * last * point
        return torch.log(mixed + 1e-12)


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
run.submit(NextRow(model, run.vocab_size))
