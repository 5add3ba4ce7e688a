"""memory_in_a_memfd: writes 1 GiB into an anonymous memory file it never maps (in no process's RSS, past
RLIMIT_DATA) and holds it open for two seconds, then submits a lookup table of logits."""
import os
import time

import torch.nn as nn

from gpt import lab

run = lab.connect()
fd = os.memfd_create("held")
chunk = b"\1" * 2**24
for _ in range(64):
    os.write(fd, chunk)
time.sleep(2.0)
run.submit(nn.Embedding(run.vocab_size, run.vocab_size))
