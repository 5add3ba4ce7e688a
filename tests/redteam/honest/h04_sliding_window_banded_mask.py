"""HONEST VARIANT h04: sliding-window attention through a causal banded boolean mask (each
position sees itself and the WINDOW - 1 tokens before it), rotary positions, AdamW with a
linear warmup then cosine decay. Never flagged."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt import lab

WIDTH = 32
HEADS = 2
WINDOW = 16
SEQ_LEN = 64
BATCH_SIZE = 8
STEPS = 25
WARMUP = 5
LEARNING_RATE = 3e-3


def rotate(x, cos, sin):
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Model(nn.Module):
    def __init__(self, vocab, width, heads, max_len):
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab, width)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.head = nn.Linear(width, vocab, bias=False)
        hd = width // heads
        angles = torch.outer(torch.arange(max_len).float(), 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd)))
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, idx):
        x = self.embed(idx)
        B, T, C = x.shape
        q, k, v = self.qkv(F.rms_norm(x, (C,))).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        cos, sin = self.cos[:T], self.sin[:T]
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        i = torch.arange(T, device=idx.device)
        band = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < WINDOW)  # causal and within the window
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=band)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return self.head(F.rms_norm(x, (C,)))


def lr_factor(step):
    if step < WARMUP:
        return (step + 1) / WARMUP
    return 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / max(1, STEPS - WARMUP)))


run = lab.connect()
model = Model(run.vocab_size, WIDTH, HEADS, run.eval_seq_len).to(run.device)
optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
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
