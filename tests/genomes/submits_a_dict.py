"""Fixture genome: hands run.submit a dict holding the model instead of the model."""
import torch.nn as nn

from gpt import lab

run = lab.connect()
model = nn.Sequential(nn.Embedding(run.vocab_size, 16), nn.Linear(16, run.vocab_size))
run.submit({"model": model})
