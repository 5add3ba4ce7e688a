"""forks_short_workers: each step starts a fresh DataLoader iterator with one worker process, which burns
CPU for a moment and exits before the runner's next /proc scan; prints the CPU seconds of itself and of
the children it reaped since its first line, as the kernel counts them, then submits a lookup table of logits."""
import os

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from gpt import lab

run = lab.connect()
began = os.times()  # the starter's imports before this line are not the genome's


class Burns(Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, i):
        a = torch.randn(256, 256)
        for _ in range(40):
            a = torch.tanh(a @ a)
        return a.sum()


while run.time_left() > 0.5:
    for _ in DataLoader(Burns(), num_workers=1):
        pass
t = os.times()
spent = sum(t[:4]) - sum(began[:4])  # user, system, children's user, children's system
print(f"kernel_cpu_seconds: {spent:.3f}", flush=True)
run.submit(nn.Embedding(run.vocab_size, run.vocab_size))
