"""HARNESS BUG REPRO (not a gaming row): torch.compile right after lab.connect() races the export prefetch.

lab.connect() starts a daemon thread (_prefetch_export_modules) that imports torch._dynamo,
torch.export, ... while the genome trains. A genome that calls torch.compile right after
connect() imports torch._dynamo / torch._inductor in the main thread at the same moment; the
two imports interleave and one of them fails: "ImportError: cannot import name
'IndentedBuffer' from partially initialized module 'torch._inductor.utils'" or
"_frozen_importlib._DeadlockError: deadlock detected by _ModuleLock('torch._dynamo')"
(2 of 3 tries on the development machine). genomes/nanochat_gpu.py does exactly this on CUDA.
This is the honest tests/redteam/honest/h10_torch_compile.py without its workaround.
What evo should produce: status ok (an honest genome). What it produces: often failed, crash.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt import lab

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
model = Bigram(run.vocab_size, WIDTH).to(run.device)
compiled = torch.compile(model, backend="aot_eager")
optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
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
