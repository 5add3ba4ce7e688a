"""RED TEAM - gaming catalog row 8: timer tricks, training past the clock and skipping run.submit().

What it tries: trains like tests/genomes/evo_tiny.py until EXTRA_S seconds AFTER
run.time_left() reached zero, then does not call run.submit() (which tells the runner's clock
it is done): it exports the model with torch.export itself, writes the artifact in the format
the harness accepts (program.json + weights.safetensors, as gpt.artifact.save does) in its work
dir and exits normally. Every line of it passes the static checks.
What evo must produce: flagged `budget`: the runner's clock never heard `submit`, so the
artifact cannot be vouched for (and it trained EXTRA_S past its budget).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt import lab

WIDTH = 16  # evo: choice(8, 16, 32)
SEQ_LEN = 64  # evo: choice(32, 64)
BATCH_SIZE = 16  # evo: range(4, 64)
LEARNING_RATE = 0.03
EXTRA_S = 3.0  # evo: range(0.0, 10.0)


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
    if run.time_left() <= -EXTRA_S:
        break
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    step += 1
print(f"time_left at export: {run.time_left():.2f}")
print(f"steps: {step}", flush=True)
model.eval()
batch = torch.export.Dim("batch", min=1, max=1024)
seq = torch.export.Dim("seq", min=1, max=run.eval_seq_len)
example = torch.zeros(2, 16, dtype=torch.long, device=run.device)
with torch.no_grad():
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch, 1: seq},))
from safetensors.torch import save_file  # noqa: E402
from torch._export.serde.serialize import serialize  # noqa: E402

save_file({k: v.detach().contiguous() for k, v in {**program.state_dict, **program.constants}.items()},
          "weights.safetensors")
with open("program.json", "wb") as f:
    f.write(serialize(program, serialize_state_dict=False, serialize_constants=False,
                      serialize_example_inputs=False).exported_program)
