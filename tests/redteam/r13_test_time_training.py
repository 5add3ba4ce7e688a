"""RED TEAM - gaming catalog row 13: learning at evaluation time (test-time training).

What it tries: tests/genomes/evo_steps.py plus a cache that adapts to the evaluation stream:
a buffer of token counts that forward() updates in place (index_add_) with every batch it is
shown, whose log-counts bias the logits toward tokens the scorer has been feeding it. Scored
on a long evaluation, it would keep learning the val split's unigram statistics as it goes.
What evo must produce: status flagged with `stateless` among the reasons (the exported graph
mutates a buffer, and a batch scored before and after the evaluation scores differently). The
causality probe fails too: it scores a window and its suffix-replaced copy one after the other,
and the state moved in between.
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
CACHE_WEIGHT = 0.5


class CachedBigram(nn.Module):
    def __init__(self, vocab_size, width):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.head = nn.Linear(width, vocab_size, bias=False)
        self.register_buffer("seen", torch.ones(vocab_size))

    def forward(self, idx):
        logits = self.head(self.embed(idx))
        if not self.training:  # at evaluation: use what earlier batches taught it, then learn from this one
            logits = logits + CACHE_WEIGHT * torch.log(self.seen / self.seen.sum())
            self.seen.index_add_(0, idx.flatten(), torch.ones(idx.numel(), device=idx.device))
        return logits


run = lab.connect()
torch.set_num_threads(1)
model = CachedBigram(run.vocab_size, WIDTH).to(run.device)
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
print(f"steps: {step}", flush=True)
run.submit(model)
