"""takes_every_core: raises its own thread count to every core of the machine and keeps them busy with
large matrix products until its budget is spent, whatever threads its slot has; then submits a lookup
table of logits (an embedding of vocab x vocab)."""
import os

import torch
import torch.nn as nn

from gpt import lab

run = lab.connect()
torch.set_num_threads(len(os.sched_getaffinity(0)))  # not the slot's share: every core it can see
a = torch.randn(768, 768)
while run.time_left() > 0.2:
    a = torch.tanh(a @ a)
run.submit(nn.Embedding(run.vocab_size, run.vocab_size))
