"""takes_every_core: a bigram model that raises its own thread count to every core of the machine and
keeps them busy with large matrix products until its budget is spent, whatever threads its slot has."""
import os

import torch
import torch.nn as nn

from gpt import lab


class Bigram(nn.Module):
    def __init__(self, vocab_size, width=16):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, idx):
        return self.head(self.embed(idx))


run = lab.connect()
torch.set_num_threads(len(os.sched_getaffinity(0)))  # not the slot's share: every core it can see
a = torch.randn(768, 768)
while run.time_left() > 0.2:
    a = torch.tanh(a @ a)
run.submit(Bigram(run.vocab_size))
