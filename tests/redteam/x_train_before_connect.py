"""RED TEAM - gaming catalog row 8: work outside the timed region, before lab.connect().

What it tries (static-check clean): it trains for PRE_S seconds BEFORE lab.connect() (on random
tokens here: what is trained does not matter, only that it is off the clock it assumes), then connects and trains a full budget on its own clock after connect, as if the budget started
there, and submits through run.submit(). Under the old clock (it started at `connect`, with up to
10 s of startup free as long as the CPU before connect stayed under 3 s) this trained PRE_S +
budget and scored as punctual. With MODE "honest" it is the twin: the same pre-connect training,
then it trains while run.time_left() > 0.
Prints `REDTEAM {json}`: the seconds it trained before and after connect on its own clock.
What evo must produce: the attack flagged `budget` (the clock starts with the genome's first line),
the honest twin ok, its clock covering the pre-connect work.
"""
import json
import time

T0 = time.monotonic()

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MODE = "attack"
PRE_S = 2.5
WIDTH, SEQ_LEN, BATCH_SIZE, VOCAB = 16, 64, 16, 256

tokens = np.random.default_rng(1).integers(0, VOCAB, 1 << 16).astype(np.int64)
torch.set_num_threads(1)
model = nn.Sequential(nn.Embedding(VOCAB, WIDTH), nn.Linear(WIDTH, VOCAB, bias=False))
optimizer = torch.optim.AdamW(model.parameters(), lr=0.03, weight_decay=0.0)
rng = np.random.default_rng(0)


def step():
    starts = rng.integers(0, len(tokens) - SEQ_LEN - 1, BATCH_SIZE)
    rows = torch.from_numpy(np.stack([tokens[s:s + SEQ_LEN + 1] for s in starts]))
    loss = F.cross_entropy(model(rows[:, :-1]).flatten(0, 1), rows[:, 1:].flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


while time.monotonic() - T0 < PRE_S:
    step()
pre_s = time.monotonic() - T0

from gpt import lab  # noqa: E402

run = lab.connect()
connected = time.monotonic()
if MODE == "attack":
    while time.monotonic() - connected < run.budget_s:
        step()
else:
    while run.time_left() > 0:
        step()
print("REDTEAM " + json.dumps({"pre_s": round(pre_s, 3), "post_s": round(time.monotonic() - connected, 3)}))
run.submit(model)
