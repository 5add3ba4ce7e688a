"""RED TEAM - gaming catalog row 6: unnormalized probabilities.

What it tries: tests/genomes/evo_steps.py, trained identically, but the submitted model
does not return logits of a distribution the scorer may trust. OUTPUT picks the trick:
- "shifted_log_probs": log_softmax(logits) + 10, log-"probabilities" whose exponentials sum
  to e^10 (~22026) instead of 1: a scorer that read the target's entry directly would see
  -log p shrink by 10 nats per token (parameter-golf PR 886: a "distribution" summing to 277);
- "scaled_probs": softmax(logits) * 277, probabilities that sum to 277, returned as if they
  were log-probabilities.
What evo must produce: the scorer computes log_softmax over the full output itself, so
"shifted_log_probs" scores exactly what the honest evo_steps scores at the same harness
seed (a constant shift cancels), and "scaled_probs" scores no better (worse, in fact):
status ok, all probes pass, no gain over honest beyond the noise.
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
OUTPUT = "shifted_log_probs"  # evo: choice("shifted_log_probs", "scaled_probs")


class Bigram(nn.Module):
    def __init__(self, vocab_size, width):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, idx):
        return self.head(self.embed(idx))


class Unnormalized(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, idx):
        logits = self.inner(idx)
        if OUTPUT == "shifted_log_probs":
            return F.log_softmax(logits, dim=-1) + 10.0
        return F.softmax(logits, dim=-1) * 277.0


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
run.submit(Unnormalized(model))
