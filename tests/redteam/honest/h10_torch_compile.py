"""HONEST VARIANT h10: the tiny bigram trained through torch.compile (run.submit unwraps the
compiled module). On this CPU inductor needs a C++ toolchain and tens of seconds to compile,
so the genome asks for the "aot_eager" backend (the same graph capture and AOT autograd,
no code generation). Never flagged.

Workaround, on purpose: it imports torch's compile and export machinery BEFORE lab.connect().
connect() starts a background thread that imports torch._dynamo / torch.export; a
torch.compile in the main thread at the same moment races it and crashes with a circular
ImportError or a _DeadlockError (a harness bug, see tests/redteam/bug_compile_after_connect.py
and docs/integrity.md). Imported first, the thread finds everything in sys.modules.
"""
import torch
import torch._dynamo  # noqa: F401  (see the docstring: before connect)
import torch._inductor  # noqa: F401
import torch.export  # noqa: F401
import torch.nn as nn
import torch.nn.functional as F

from gpt import lab

WIDTH = 16
SEQ_LEN = 64
BATCH_SIZE = 16
STEPS = 30
LEARNING_RATE = 0.03
BACKEND = "aot_eager"


class Bigram(nn.Module):
    def __init__(self, vocab_size, width):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, idx):
        return self.head(self.embed(idx))


run = lab.connect()
model = Bigram(run.vocab_size, WIDTH).to(run.device)
compiled = torch.compile(model, backend=BACKEND)
optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
step = 0
for x, y in run.train_batches(BATCH_SIZE, SEQ_LEN):
    if step >= STEPS or run.time_left() <= 0:
        break
    loss = F.cross_entropy(compiled(x).flatten(0, 1), y.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    step += 1
print(f"steps: {step}")
run.submit(compiled)
