"""HONEST VARIANT h06: a causal convolution (left padding of KERNEL - 1: position t sees t-3..t,
the mirror image of r05_peek_next_token's look-ahead), RMSprop, step decay. Never flagged."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt import lab

WIDTH = 32
KERNEL = 4
SEQ_LEN = 64
BATCH_SIZE = 16
STEPS = 30
LEARNING_RATE = 3e-3


class CausalConv(nn.Module):
    def __init__(self, vocab, width):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.conv = nn.Conv1d(width, width, KERNEL)
        self.head = nn.Linear(width, vocab)

    def forward(self, idx):
        x = self.embed(idx).transpose(1, 2)  # [B, C, T]
        h = self.conv(F.pad(x, (KERNEL - 1, 0)))  # left padding only: causal
        return self.head(F.gelu(h).transpose(1, 2) + self.embed(idx))


run = lab.connect()
model = CausalConv(run.vocab_size, WIDTH).to(run.device)
optimizer = torch.optim.RMSprop(model.parameters(), lr=LEARNING_RATE)
schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.5)
step = 0
for x, y in run.train_batches(BATCH_SIZE, SEQ_LEN):
    if step >= STEPS or run.time_left() <= 0:
        break
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    schedule.step()
    step += 1
print(f"steps: {step}")
run.submit(model)
