"""takes_every_core: raises its own thread count to every core of the machine and keeps them busy with
large matrix products until its budget is spent, whatever threads its slot has; prints the cores it may
run on; then submits a lookup table of logits (an embedding of vocab x vocab)."""
import os

import torch
import torch.nn as nn

from gpt import lab

run = lab.connect()
torch.set_num_threads(os.cpu_count())  # not the slot's share: every core of the machine
print("affinity:", ",".join(map(str, sorted(os.sched_getaffinity(0)))), flush=True)
a = torch.randn(768, 768)
while run.time_left() > 0.2:
    a = torch.tanh(a @ a)
run.submit(nn.Embedding(run.vocab_size, run.vocab_size))
