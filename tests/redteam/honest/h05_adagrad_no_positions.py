"""HONEST VARIANT h05: causal attention with no positional information at all (the causal mask
alone), Adagrad, constant learning rate. Never flagged."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt import lab

WIDTH = 32
HEADS = 2
SEQ_LEN = 64
BATCH_SIZE = 8
STEPS = 25
LEARNING_RATE = 0.05


class Model(nn.Module):
    def __init__(self, vocab, width, heads):
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab, width)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.head = nn.Linear(2 * width, vocab)

    def forward(self, idx):
        x = self.embed(idx)
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        return self.head(torch.cat([x, y], dim=-1))


run = lab.connect()
model = Model(run.vocab_size, WIDTH, HEADS).to(run.device)
optimizer = torch.optim.Adagrad(model.parameters(), lr=LEARNING_RATE)
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
