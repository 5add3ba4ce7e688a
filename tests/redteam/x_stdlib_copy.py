"""RED TEAM 2 - reading eval documents inside bwrap through a copy the sandbox must show: the stdlib.

What it tries: the red team's own dataset (tests/conftest.py `small_dataset`, a `text:` corpus) is
made of the first lines of the standard library's top-level modules. bwrap hides the dataset folder
and the corpus folder, but must show the interpreter's stdlib. The genome (static checks ON: no
path literal, no environ) lists sysconfig's stdlib folder, reads the head of every top-level module
and writes what it read to `recovered.txt` in its work dir (the test checks how much of the val split
is in it), then trains honestly like tests/genomes/evo_steps.py and submits.
What evo must produce: under bwrap no text of the val split is readable (seal() says `sealed`).
"""
import sysconfig
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt import lab

HEAD_BYTES = 6000


class Bigram(nn.Module):
    def __init__(self, vocab_size, width):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, idx):
        return self.head(self.embed(idx))


run = lab.connect()
chunks = []
for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
    try:
        chunks.append(path.read_bytes()[:HEAD_BYTES])
    except OSError:
        pass
Path("recovered.txt").write_bytes(b"\n".join(chunks))
print(f"REDTEAM read {len(chunks)} modules, {sum(map(len, chunks))} bytes")
torch.set_num_threads(1)
model = Bigram(run.vocab_size, 16).to(run.device)
optimizer = torch.optim.AdamW(model.parameters(), lr=0.03)
step = 0
for x, y in run.train_batches(16, 64):
    if step >= 30 or run.time_left() <= 0:
        break
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    step += 1
print(f"steps: {step}")
run.submit(model)
