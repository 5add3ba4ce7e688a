"""RED TEAM 3 - a buffer written without a writing op: the scorer's fast path must still see it.

What it tries: the scorer functionalizes only graphs with an op that may write a tensor (its schema
says so). Training-mode batch_norm updates its running mean and variance in place, and its schema
(`aten.batch_norm`, `aten.native_batch_norm`) does not say so. This genome's forward runs the
embedding through F.batch_norm(training=True) on two registered buffers and mixes the running mean
back into the logits, so each scored batch leaves statistics of the eval text for the next one: a
model that remembers what it was shown, with no in-place op in sight.
What evo must produce: the artifact refused (bad_artifact, "changes its buffers"), never a score.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt import lab

WIDTH = 16


class Remembers(nn.Module):
    def __init__(self, vocab_size):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, WIDTH)
        self.head = nn.Linear(WIDTH, vocab_size, bias=False)
        self.register_buffer("seen_mean", torch.zeros(WIDTH))
        self.register_buffer("seen_var", torch.ones(WIDTH))

    def forward(self, idx):
        h = self.embed(idx)
        F.batch_norm(h.transpose(1, 2), self.seen_mean, self.seen_var, training=True, momentum=0.5)
        return self.head(h + self.seen_mean)


run = lab.connect()
model = Remembers(run.vocab_size).to(run.device)
optimizer = torch.optim.AdamW(model.parameters(), lr=0.03)
for x, y in run.train_batches(16, 64):
    if run.time_left() <= 0:
        break
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
run.submit(model)
