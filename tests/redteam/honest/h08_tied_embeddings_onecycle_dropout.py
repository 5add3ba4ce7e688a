"""HONEST VARIANT h08: tied input/output embeddings, learned positions, LayerNorm, GELU, dropout
(active in training, off in the exported eval-mode graph), gradient clipping, OneCycleLR.
Never flagged."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt import lab

WIDTH = 32
HEADS = 4
SEQ_LEN = 64
BATCH_SIZE = 8
STEPS = 25
LEARNING_RATE = 5e-3
DROPOUT = 0.1


class Model(nn.Module):
    def __init__(self, vocab, width, heads, max_len):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.zeros(max_len, width))
        self.layer = nn.TransformerEncoderLayer(width, heads, 4 * width, DROPOUT, activation="gelu",
                                                batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(width)

    def forward(self, idx):
        T = idx.shape[1]
        x = self.embed(idx) + self.pos[:T]
        mask = torch.triu(torch.full((T, T), float("-inf"), device=idx.device), diagonal=1)
        x = self.layer(x, src_mask=mask)
        return self.norm(x) @ self.embed.weight.t()  # tied output embedding


run = lab.connect()
model = Model(run.vocab_size, WIDTH, HEADS, run.eval_seq_len).to(run.device)
optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LEARNING_RATE, total_steps=STEPS)
step = 0
for x, y in run.train_batches(BATCH_SIZE, SEQ_LEN):
    if step >= STEPS or run.time_left() <= 0:
        break
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    step += 1
print(f"steps: {step}")
run.submit(model)
