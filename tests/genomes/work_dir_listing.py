"""work_dir_listing: says what its work dir held when it started, then leaves a file behind in it.

For the warm-slot tests: a slot started warm must hand every genome an empty work dir of its own
(nothing from the genome before it) and a process of its own.
"""
import json
import os

import torch.nn as nn

from gpt import lab

print("found:", json.dumps(sorted(os.listdir("."))))
run = lab.connect()
with open("left_behind.txt", "w") as f:
    f.write("written by an earlier genome")
model = nn.Sequential(nn.Embedding(run.vocab_size, 8), nn.Linear(8, run.vocab_size))
run.submit(model)
