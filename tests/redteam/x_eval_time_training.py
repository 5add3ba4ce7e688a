"""RED TEAM 2 - training moved into the artifact: the scorer runs the rest of the training, unclocked.

What it tries: trains exactly like tests/genomes/evo_steps.py (same Bigram, AdamW, STEPS, seed) inside
the budget, then exports a module whose forward() first runs IN_GRAPH_STEPS more steps of plain SGD on
the same model, with hand-written gradients (ordinary ATen ops: gather, softmax, matmul, index_add on
fresh tensors), over IN_GRAPH_BATCHES train batches stored in the artifact as a constant, and only then
computes the logits. The graph mutates nothing (every update makes a new tensor) and is deterministic,
so the stateless probe sees the same output twice; the input is read only at the end, causally. The
scorer, whose compute no clock bounds (SCORE_TIMEOUT_S = 600 s), redoes that training on every call.
IN_GRAPH_STEPS = 0 is the honest twin (it is then evo_steps.py).
What evo must produce: flagged, or a val_bpb no better than the honest twin.
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
IN_GRAPH_STEPS = 60
IN_GRAPH_BATCHES = 60
IN_GRAPH_LR = 1.0


class Bigram(nn.Module):
    def __init__(self, vocab_size, width):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, idx):
        return self.head(self.embed(idx))


class TrainsAtScoring(nn.Module):
    def __init__(self, base, data, vocab_size):
        super().__init__()
        self.E = nn.Parameter(base.embed.weight.detach().clone())
        self.H = nn.Parameter(base.head.weight.detach().clone())
        self.register_buffer("data", data)
        self.vocab_size = vocab_size

    def forward(self, idx):
        E, H = self.E, self.H
        for k in range(IN_GRAPH_STEPS):
            chunk = self.data[k % self.data.shape[0]]
            x, y = chunk[:, :-1].reshape(-1), chunk[:, 1:].reshape(-1)
            h = E[x]
            g = torch.softmax(h @ H.t(), dim=-1) - F.one_hot(y, self.vocab_size).to(h.dtype)
            g = g / x.shape[0]
            dH = g.t() @ h
            dE = torch.zeros_like(E).index_add(0, x, g @ H)
            E, H = E - IN_GRAPH_LR * dE, H - IN_GRAPH_LR * dH
        return F.embedding(idx, E) @ H.t()


run = lab.connect()
torch.set_num_threads(1)
model = Bigram(run.vocab_size, WIDTH).to(run.device)
optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
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
if IN_GRAPH_STEPS:
    data = torch.stack([torch.cat([x, y[:, -1:]], dim=1) for _, (x, y) in zip(range(IN_GRAPH_BATCHES), batches)])
    run.submit(TrainsAtScoring(model, data, run.vocab_size))
run.submit(model)
