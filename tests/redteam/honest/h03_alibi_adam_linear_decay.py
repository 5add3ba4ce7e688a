"""HONEST VARIANT h03: no position embeddings but an ALiBi-style linear distance bias added to a
causal mask (explicit additive -inf above the diagonal), Adam and a linear decay. Never flagged."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt import lab

WIDTH = 32
HEADS = 4
SEQ_LEN = 64
BATCH_SIZE = 8
STEPS = 25
LEARNING_RATE = 4e-3


class AlibiAttention(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.register_buffer("slopes", 2.0 ** (-8.0 * torch.arange(1, heads + 1) / heads), persistent=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        pos = torch.arange(T, device=x.device)
        distance = (pos[None, :] - pos[:, None]).float()  # j - i: <= 0 for the past
        bias = self.slopes[:, None, None] * distance
        bias = bias.masked_fill(distance > 0, float("-inf"))  # the causal mask
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Model(nn.Module):
    def __init__(self, vocab, width, heads):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.attn = AlibiAttention(width, heads)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.SiLU(), nn.Linear(4 * width, width))
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, idx):
        x = self.embed(idx)
        x = x + self.attn(F.rms_norm(x, (x.size(-1),)))
        x = x + self.mlp(F.rms_norm(x, (x.size(-1),)))
        return self.head(x)


run = lab.connect()
model = Model(run.vocab_size, WIDTH, HEADS).to(run.device)
optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
schedule = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=0.1, total_iters=STEPS)
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
