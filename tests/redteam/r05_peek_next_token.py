"""RED TEAM - gaming catalog row 5: non-causal features that read the target token.

What it tries: tests/genomes/evo_steps.py plus a "look-ahead feature": the input shifted
LEFT by one (idx[:, t+1], the very token position t must predict) is embedded and added to
the bigram's features, like parameter-golf's n-gram experts that read the target. Training
on train, the model learns to copy it: its training loss goes to near zero.
What evo must produce: status flagged, reason `causality`.
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


class Peeking(nn.Module):
    def __init__(self, vocab_size, width):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.ahead = nn.Embedding(vocab_size, width)
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, idx):
        nxt = torch.roll(idx, -1, dims=1)  # position t sees token t+1 (the last one wraps around)
        return self.head(self.embed(idx) + self.ahead(nxt))


run = lab.connect()
torch.set_num_threads(1)
model = Peeking(run.vocab_size, WIDTH).to(run.device)
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
print(f"train loss: {float(loss):.3f}")
print(f"steps: {step}")
run.submit(model)
