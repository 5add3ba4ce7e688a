"""Fixture genome: trains nothing, says so on stderr and exits 0 without calling run.submit."""
import sys

from gpt import lab

run = lab.connect()
x, y = next(run.train_batches(2, 8))
print(f"read a batch of {tuple(x.shape)} and forgot to submit", file=sys.stderr)
