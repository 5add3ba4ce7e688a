"""tiny_cpu: a small byte-level GPT sized for two CPU cores and a 30-second slot.

Notable: RMSNorm (pre-norm, no learnable scale), rotary position embeddings, ReLU^2 MLP,
causal scaled-dot-product attention, untied input/output embeddings, no biases, AdamW
with a linear warmup and a warmdown driven by the harness clock (run.time_left()).

Edit the UPPER_CASE block directly; evo's knob operator mutates it too.
Run by hand: `python genomes/tiny_cpu.py` trains with a default budget and prints its scores.
"""
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt import lab

# ---------------------------------------------------------------- hyperparameters
DEPTH = 2  # evo: range(1, 8)
WIDTH = 128  # evo: pow2(32, 512)
HEADS = 4  # evo: choice(1, 2, 4, 8)
SEQ_LEN = 128  # evo: choice(64, 128, 256)
BATCH_SIZE = 16  # evo: pow2(4, 128)
LEARNING_RATE = 3e-3  # evo: log(1e-4, 3e-2)
WEIGHT_DECAY = 0.01  # evo: log(1e-4, 0.3)
WARMUP_FRACTION = 0.05  # evo: range(0.0, 0.5)
WARMDOWN_FRACTION = 0.3  # evo: range(0.0, 0.9)
ROPE_BASE = 10000.0  # evo: log(100.0, 1e6)
GRAD_CLIP = 1.0  # evo: log(0.1, 10.0)


# ---------------------------------------------------------------- model
def rms_norm(x):
    return F.rms_norm(x, (x.size(-1),))


class Rotary(nn.Module):
    def __init__(self, head_dim, max_len, base):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
        angles = torch.outer(torch.arange(max_len).float(), inv_freq)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x):  # x: [B, H, T, D]
        T = x.size(2)
        cos, sin = self.cos[:T], self.sin[:T]
        x1, x2 = x[..., ::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Block(nn.Module):
    def __init__(self, width, heads, rotary):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.up = nn.Linear(width, 4 * width, bias=False)
        self.down = nn.Linear(4 * width, width, bias=False)
        self.rotary = rotary

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(rms_norm(x)).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k = self.rotary(rms_norm(q)), self.rotary(rms_norm(k))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.down(F.relu(self.up(rms_norm(x))).square())


class GPT(nn.Module):
    def __init__(self, vocab_size, width, depth, heads, max_len):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        rotary = Rotary(width // heads, max_len, ROPE_BASE)
        self.blocks = nn.ModuleList(Block(width, heads, rotary) for _ in range(depth))
        self.head = nn.Linear(width, vocab_size, bias=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02 if "embed" in name else 1.0 / math.sqrt(p.size(1)))
        for block in self.blocks:  # residual branches start at zero
            nn.init.zeros_(block.proj.weight)
            nn.init.zeros_(block.down.weight)

    def forward(self, idx):
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(rms_norm(x))


# ---------------------------------------------------------------- setup
run = lab.connect()
model = GPT(run.vocab_size, WIDTH, DEPTH, HEADS, max(SEQ_LEN, run.eval_seq_len)).to(run.device)
optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, betas=(0.9, 0.95))
n_params = sum(p.numel() for p in model.parameters())


def lr_scale(progress):
    """Linear warmup, flat, then linear warmdown to 0, on the fraction of the budget used."""
    if progress < WARMUP_FRACTION:
        return (progress + 1e-3) / (WARMUP_FRACTION + 1e-3)
    if progress > 1.0 - WARMDOWN_FRACTION:
        return max(0.0, (1.0 - progress) / max(WARMDOWN_FRACTION, 1e-3))
    return 1.0


# ---------------------------------------------------------------- training loop
t0 = time.time()
step = 0
loss = torch.tensor(float("nan"))
for x, y in run.train_batches(BATCH_SIZE, SEQ_LEN):
    left = run.time_left()
    if left <= 0:
        break
    for group in optimizer.param_groups:
        group["lr"] = LEARNING_RATE * lr_scale(1.0 - left / run.budget_s)
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    step += 1

# ---------------------------------------------------------------- summary
print(f"steps: {step}")
print(f"params: {n_params}")
print(f"train_loss: {loss.item():.4f}")
print(f"train_seconds: {time.time() - t0:.1f}")
run.submit(model)
