"""Fixture genome: its model branches in Python on a tensor value, which torch.export cannot trace."""
import torch
import torch.nn as nn

from gpt import lab


class Branchy(nn.Module):
    def __init__(self, vocab_size):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, vocab_size)

    def forward(self, idx):
        x = self.embed(idx)
        if x.sum() > 0:  # data-dependent control flow
            return x
        return -x


run = lab.connect()
run.submit(Branchy(run.vocab_size).to(run.device))
