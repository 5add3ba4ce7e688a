"""Fixture genome: records its whole environment in environ.json, then trains and submits a bigram model."""
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt import lab

with open("environ.json", "w") as f:
    json.dump(dict(os.environ), f)

run = lab.connect()
model = nn.Sequential(nn.Embedding(run.vocab_size, 32), nn.Linear(32, run.vocab_size)).to(run.device)
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
step = 0
for x, y in run.train_batches(8, 64):
    if step >= 30 or (step >= 5 and run.time_left() <= 0):  # a few steps even on a busy machine
        break
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    opt.zero_grad()
    loss.backward()
    opt.step()
    step += 1
print(f"steps: {step}")
run.submit(model)
