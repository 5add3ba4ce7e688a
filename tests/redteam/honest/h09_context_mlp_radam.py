"""HONEST VARIANT h09: a fixed-context MLP (Bengio-style): the embeddings of the CONTEXT previous
tokens, shifted RIGHT with zero padding, concatenated and fed through an MLP; RAdam. Never flagged."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt import lab

WIDTH = 16
CONTEXT = 3
HIDDEN = 64
SEQ_LEN = 64
BATCH_SIZE = 16
STEPS = 30
LEARNING_RATE = 5e-3


class ContextMLP(nn.Module):
    def __init__(self, vocab, width):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.mlp = nn.Sequential(nn.Linear(CONTEXT * width, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, vocab))

    def forward(self, idx):
        x = self.embed(idx)  # [B, T, C]
        T = idx.shape[1]
        shifted = [F.pad(x, (0, 0, j, 0))[:, :T] for j in range(CONTEXT)]  # token t - j at position t
        return self.mlp(torch.cat(shifted, dim=-1))


run = lab.connect()
model = ContextMLP(run.vocab_size, WIDTH).to(run.device)
optimizer = torch.optim.RAdam(model.parameters(), lr=LEARNING_RATE)
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
