"""dilutes_its_share: trains on every core of the machine, whatever threads its slot has, then idles through
its export allowance (its forward sleeps while torch.export traces it), so that over the whole slot its CPU
share looks like one core's."""
import os
import time

import torch
import torch.nn as nn

from gpt import lab

run = lab.connect()
torch.set_num_threads(os.cpu_count())
a = torch.randn(768, 768)
while run.time_left() > 0.2:
    a = torch.tanh(a @ a)


class Idles(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)

    def forward(self, idx):
        time.sleep(min(4.0, 0.9 * run.budget_s))  # runs once, while the export traces it
        return self.table(idx)


run.submit(Idles(run.vocab_size))
