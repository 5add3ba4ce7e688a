"""RED TEAM - sandbox escape: leaving processes running after the slot ends.

What it tries: before training, it starts two processes meant to outlive it: a classic
daemon (fork, setsid, fork again, the middle process exits, so it is orphaned) and a setsid'd
child that also scrubbed its environment (no EVO_SLOT_TOKEN marker to be found by). In a real
attack they would keep training, or write into the next slot's directory, or eat its CPU. Both
carry MARK (written here by the test) on their command lines. Then it trains like
tests/genomes/evo_steps.py and submits normally.
What evo must produce: static checks on: rejected (`process`). Static checks off, under bwrap:
the slot scores ok, the supervisor reports leftover_processes == 2, and no process carrying
MARK is alive once run_slot returns.
"""
import os
import sys
import time

MARK = "evo-redteam-daemon"  # set by the test: a unique marker


def sleeper(tag, env=None):
    args = [sys.executable, "-c", "import time; time.sleep(300)", MARK + tag]
    if env is None:
        os.execv(sys.executable, args)
    os.execve(sys.executable, args, env)


pid = os.fork()
if pid == 0:  # the classic daemon: fork, setsid, fork again, the middle process exits
    os.setsid()
    if os.fork() == 0:
        sleeper("-double")
    os._exit(0)
os.waitpid(pid, 0)
if os.fork() == 0:  # a setsid'd child with a scrubbed environment
    os.setsid()
    sleeper("-scrubbed", env={})
time.sleep(0.3)

import torch  # noqa: E402  (after the forks)
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from gpt import lab  # noqa: E402

WIDTH = 16
SEQ_LEN = 64
BATCH_SIZE = 16
STEPS = 30
LEARNING_RATE = 0.03


class Bigram(nn.Module):
    def __init__(self, vocab_size, width):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, idx):
        return self.head(self.embed(idx))


run = lab.connect()
torch.set_num_threads(1)
model = Bigram(run.vocab_size, WIDTH).to(run.device)
optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
step = 0
for x, y in run.train_batches(BATCH_SIZE, SEQ_LEN):
    if step >= STEPS or run.time_left() <= 0:
        break
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    step += 1
print("spawned daemons, trained", flush=True)
print(f"steps: {step}", flush=True)
run.submit(model)
