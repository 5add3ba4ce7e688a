"""nanochat_gpu: a single-GPU GPT in the shape of a nanochat-style speedrun script, for evo's harness.

Notable:
- rotary position embeddings (tables sized to max(SEQ_LEN, run.eval_seq_len)) and QK-norm;
- RMSNorm without learned scale (pre-norm, on the embedding and before the head), no biases;
- ReLU^2 MLP (MLP_RATIO x wide); untied token embedding and LM head;
- logit softcap: logits = LOGIT_SOFTCAP * tanh(logits / LOGIT_SOFTCAP), in fp32;
- value embeddings (VALUE_EMBEDS): every other layer, the last included, adds a per-token
  table to its attention values through a per-head sigmoid gate (per position: causal);
- sliding-window attention by layer: WINDOW_PATTERN tiled over the layers, S = SHORT_WINDOW
  tokens, L = full context, the last layer always L. S layers use SDPA with a boolean mask
  built from positions (so torch.export traces it for any T); L layers use is_causal;
- per-layer learned residual scalars: x <- r_i * x + s_i * x0 (x0: the normalized embedding);
- Muon for the 2-D matrices of the blocks (Nesterov momentum, then Newton-Schulz
  orthogonalization, batched over same-shape matrices); AdamW for the embeddings, value
  embeddings, head and scalars (both plain classes: torch.optim would import torch._dynamo,
  seconds of the clock on a CPU);
- bf16 autocast and torch.compile (COMPILE) on CUDA; plain fp32 eager on a CPU;
- warmup / flat / warmdown of every learning rate on the fraction of the harness clock used
  (run.time_left()); GRAD_ACCUM micro-batches of BATCH_SIZE x SEQ_LEN tokens per step;
- summary: steps, tokens_per_second (after TIMING_SKIP_STEPS steps: compilation is not in it),
  mfu (6 * matmul params + attention flops per token against the card's dense bf16 peak),
  peak_memory_mb (CUDA allocator peak), train_loss.

Defaults are sized for one H100/H200 (depth 8, width 512, ~50M parameters with an 8192-token
BPE, 2048-token sequences, 131k tokens per step). Edit the UPPER_CASE block directly; evo's
knob operator mutates it too.
"""
import contextlib
import math
import time
from collections import defaultdict

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt import lab

# ---------------------------------------------------------------- hyperparameters
DEPTH = 8  # evo: range(1, 24)
WIDTH = 512  # evo: choice(256, 384, 512, 640, 768, 1024)
HEAD_DIM = 128  # evo: choice(32, 64, 128)
MLP_RATIO = 4  # evo: choice(2, 3, 4)
SEQ_LEN = 2048  # evo: choice(256, 512, 1024, 2048, 4096)
BATCH_SIZE = 32  # evo: range(1, 128)
GRAD_ACCUM = 2  # evo: choice(1, 2, 4, 8)
WINDOW_PATTERN = "SSSL"  # evo: choice("L", "SL", "SSL", "SSSL")
SHORT_WINDOW = 512  # evo: choice(64, 128, 256, 512, 1024)
VALUE_EMBEDS = True  # evo: choice(True, False)
LOGIT_SOFTCAP = 15.0  # evo: range(5.0, 50.0)
ROPE_BASE = 10000.0
MATRIX_LR = 0.02  # evo: range(0.002, 0.1)
EMBED_LR = 0.3  # evo: range(0.01, 1.0)
UNEMBED_LR = 0.004  # evo: range(0.0005, 0.03)
SCALAR_LR = 0.3  # evo: range(0.01, 1.0)
ADAM_BETAS = (0.8, 0.95)  # evo: choice((0.8, 0.95), (0.9, 0.95), (0.9, 0.99))
MUON_MOMENTUM = 0.95  # evo: range(0.8, 0.99)
NS_STEPS = 5  # evo: choice(3, 4, 5, 6)
WEIGHT_DECAY = 0.0  # evo: range(0.0, 0.2)
WARMUP_FRACTION = 0.02  # evo: range(0.0, 0.2)
WARMDOWN_FRACTION = 0.4  # evo: range(0.0, 0.9)
FINAL_LR_FRACTION = 0.0  # evo: range(0.0, 0.5)
COMPILE = True  # evo: choice(True, False)
VE_GATE_CHANNELS = 32
TIMING_SKIP_STEPS = 5  # evo: choice(5)
LOG_EVERY = 100  # evo: choice(100)


# ---------------------------------------------------------------- model
def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def rotate(x, cos, sin):
    """Rotary embedding on [B, T, H, D] with tables [T, D/2] (halves, not interleaved)."""
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Block(nn.Module):
    def __init__(self, width, heads, head_dim, short, value_embed):
        super().__init__()
        self.heads, self.head_dim, self.short = heads, head_dim, short
        inner = heads * head_dim
        self.c_q = nn.Linear(width, inner, bias=False)
        self.c_k = nn.Linear(width, inner, bias=False)
        self.c_v = nn.Linear(width, inner, bias=False)
        self.c_o = nn.Linear(inner, width, bias=False)
        self.c_fc = nn.Linear(width, MLP_RATIO * width, bias=False)
        self.c_proj = nn.Linear(MLP_RATIO * width, width, bias=False)
        self.gate_channels = min(VE_GATE_CHANNELS, width)
        self.ve_gate = nn.Linear(self.gate_channels, heads, bias=False) if value_embed else None

    def forward(self, x, ve, cos, sin, mask):
        B, T, _ = x.shape
        h = norm(x)
        q = self.c_q(h).view(B, T, self.heads, self.head_dim)
        dtype = q.dtype
        k = self.c_k(h).view(B, T, self.heads, self.head_dim)
        v = self.c_v(h).view(B, T, self.heads, self.head_dim)
        if ve is not None:  # a per-token table, gated per head from this position's input only
            gate = 2.0 * torch.sigmoid(self.ve_gate(h[..., :self.gate_channels]))
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.heads, self.head_dim)
        q, k = norm(rotate(q, cos, sin)), norm(rotate(k, cos, sin))
        # the projections' dtype (bf16 under autocast): fp32 tables, norms and value embeddings promote
        q, k, v = [t.to(dtype).transpose(1, 2) for t in (q, k, v)]
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.c_o(y.transpose(1, 2).reshape(B, T, -1))
        return x + self.c_proj(F.relu(self.c_fc(norm(x))).square())


def layer_windows(depth, pattern):
    """'S'/'L' per layer: the pattern tiled, the last layer always long."""
    pattern = (pattern or "L").upper()
    kinds = [pattern[i % len(pattern)] for i in range(depth)]
    kinds[-1] = "L"
    return kinds


class GPT(nn.Module):
    def __init__(self, vocab_size, width, depth, head_dim, max_len):
        super().__init__()
        heads = max(1, width // head_dim)
        self.kinds = layer_windows(depth, WINDOW_PATTERN)
        ve_layers = [i for i in range(depth) if VALUE_EMBEDS and i % 2 == (depth - 1) % 2]
        self.wte = nn.Embedding(vocab_size, width)
        self.blocks = nn.ModuleList(Block(width, heads, head_dim, self.kinds[i] == "S", i in ve_layers)
                                    for i in range(depth))
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(vocab_size, heads * head_dim) for i in ve_layers})
        self.lm_head = nn.Linear(width, vocab_size, bias=False)
        self.resid_lambdas = nn.Parameter(torch.ones(depth))
        self.x0_lambdas = nn.Parameter(torch.zeros(depth))
        inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, head_dim, 2).float() / head_dim))
        angles = torch.outer(torch.arange(max_len).float(), inv_freq)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        self.reset_parameters(width)

    @torch.no_grad()
    def reset_parameters(self, width):
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        bound = math.sqrt(3.0 / width)  # unit-variance outputs for normalized inputs
        for block in self.blocks:
            for lin in (block.c_q, block.c_k, block.c_v, block.c_fc):
                nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.zeros_(block.c_o.weight)  # residual branches start at zero
            nn.init.zeros_(block.c_proj.weight)
            if block.ve_gate is not None:
                nn.init.zeros_(block.ve_gate.weight)  # gate 1.0 at start
        for table in self.value_embeds.values():
            nn.init.uniform_(table.weight, -bound, bound)

    def forward(self, idx):
        T = idx.size(1)
        cos, sin = self.cos[:T], self.sin[:T]
        pos = torch.arange(T, device=idx.device)
        distance = pos[:, None] - pos[None, :]
        short_mask = (distance >= 0) & (distance < SHORT_WINDOW)  # causal and within the window
        x = x0 = norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, ve, cos, sin, short_mask if block.short else None)
        logits = self.lm_head(norm(x)).float()
        return LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)


# ---------------------------------------------------------------- optimizer
def orthogonalize(G, steps):
    """Newton-Schulz iteration towards U V^T for G = U S V^T (batched over leading dims).

    A quintic X <- aX + (b A + c A^2) X with A = X X^T, after scaling G to spectral norm <= 1.
    The coefficients (3.4445, -4.7750, 2.0315) come from the Muon write-up: they push small
    singular values up fast and leave every singular value in roughly [0.7, 1.2], not exactly 1."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16() if G.is_cuda else G.float()
    wide = X.size(-2) <= X.size(-1)
    if not wide:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * (A @ A)) @ X
    return X if wide else X.mT


class Muon:
    """SGD with Nesterov momentum whose update is orthogonalized, for 2-D hidden matrices.

    The optimizers here are plain classes, not torch.optim ones: building any torch.optim
    optimizer imports torch._dynamo, seconds of the slot's clock on a CPU."""

    def __init__(self, params, lr, momentum, ns_steps, weight_decay):
        self.param_groups = [dict(params=list(params), lr=lr, momentum=momentum, ns_steps=ns_steps,
                                  weight_decay=weight_decay)]
        self.state = {}

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            by_shape = defaultdict(list)
            for p in group["params"]:
                if p.grad is not None:
                    by_shape[tuple(p.shape)].append(p)
            for shape, params in by_shape.items():
                updates = []
                for p in params:
                    if p not in self.state:
                        self.state[p] = torch.zeros_like(p)
                    buf = self.state[p]
                    buf.lerp_(p.grad, 1 - mom)
                    updates.append(p.grad.lerp(buf, mom))
                ortho = orthogonalize(torch.stack(updates), group["ns_steps"])
                scale = max(1.0, shape[0] / shape[1]) ** 0.5
                for p, u in zip(params, ortho.unbind(0)):
                    if wd:
                        p.mul_(1 - lr * wd)
                    p.add_(u.to(p.dtype), alpha=-lr * scale)


class AdamW:
    """Adam with decoupled weight decay over parameter groups (each a dict with params and lr)."""

    def __init__(self, groups, betas, eps, weight_decay=0.0):
        self.param_groups = [dict(g, params=list(g["params"])) for g in groups]
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.state = {}
        self.t = 0

    @torch.no_grad()
    def step(self):
        self.t += 1
        b1, b2 = self.betas
        bias1, bias2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for group in self.param_groups:
            lr = group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p not in self.state:
                    self.state[p] = (torch.zeros_like(p), torch.zeros_like(p))
                m, v = self.state[p]
                m.lerp_(p.grad, 1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                if self.weight_decay:
                    p.mul_(1 - lr * self.weight_decay)
                p.addcdiv_(m, (v / bias2).sqrt_().add_(self.eps), value=-lr / bias1)


def lr_multiplier(progress):
    """Linear warmup, flat, then linear warmdown to FINAL_LR_FRACTION, on the fraction of the clock used."""
    if progress < WARMUP_FRACTION:
        return (progress + 1e-3) / (WARMUP_FRACTION + 1e-3)
    if progress > 1.0 - WARMDOWN_FRACTION:
        t = min(1.0, (progress - (1.0 - WARMDOWN_FRACTION)) / max(WARMDOWN_FRACTION, 1e-3))
        return 1.0 - t * (1.0 - FINAL_LR_FRACTION)
    return 1.0


def bf16_peak_flops(device):
    """Dense bf16 peak of the card, or None when unknown (a CPU, an unlisted GPU)."""
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in (("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("A100", 312e12)):
        if key in name:
            return peak
    return None


# ---------------------------------------------------------------- setup
run = lab.connect()
cuda = run.device.startswith("cuda")
if cuda:
    torch.set_float32_matmul_precision("high")  # TF32 for what autocast leaves in fp32
model = GPT(run.vocab_size, WIDTH, DEPTH, HEAD_DIM, max(SEQ_LEN, run.eval_seq_len)).to(run.device)
train_model = torch.compile(model, dynamic=False) if (cuda and COMPILE) else model
autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

matrices = [p for p in model.blocks.parameters() if p.dim() == 2]
adam_groups = [
    dict(params=[model.wte.weight, *model.value_embeds.parameters()], lr=EMBED_LR),
    dict(params=[model.lm_head.weight], lr=UNEMBED_LR),
    dict(params=[model.resid_lambdas, model.x0_lambdas], lr=SCALAR_LR),
]
adam = AdamW(adam_groups, betas=ADAM_BETAS, eps=1e-10)
muon = Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM, ns_steps=NS_STEPS, weight_decay=WEIGHT_DECAY)
optimizers = (adam, muon)
for opt in optimizers:
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]

n_params = sum(p.numel() for p in model.parameters())
n_matmul = sum(p.numel() for p in matrices) + model.lm_head.weight.numel()
inner = max(1, WIDTH // HEAD_DIM) * HEAD_DIM
attention_flops = 0.0  # per token, forward + backward: 12 * inner * keys attended (on average)
for kind in model.kinds:
    window = SHORT_WINDOW if kind == "S" else SEQ_LEN
    attention_flops += 12 * inner * sum(min(i + 1, window) for i in range(SEQ_LEN)) / SEQ_LEN
flops_per_token = 6 * n_matmul + attention_flops
tokens_per_step = BATCH_SIZE * SEQ_LEN * GRAD_ACCUM


def sync():
    if cuda:
        torch.cuda.synchronize()


# ---------------------------------------------------------------- training loop
t0 = time.time()
batches = run.train_batches(BATCH_SIZE, SEQ_LEN)
step = 0
loss = torch.tensor(float("nan"))
timed_from, timed_tokens = None, 0
while True:
    left = run.time_left()
    if left <= 0:
        break
    scale = lr_multiplier(1.0 - left / run.budget_s)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * scale
    for _ in range(GRAD_ACCUM):
        x, y = next(batches)
        with autocast:
            logits = train_model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten()) / GRAD_ACCUM
        loss.backward()
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)
    step += 1
    if step == TIMING_SKIP_STEPS:
        sync()
        timed_from = time.time()
    elif step > TIMING_SKIP_STEPS:
        timed_tokens += tokens_per_step
    if step % LOG_EVERY == 0:
        print(f"step {step} loss {loss.item() * GRAD_ACCUM:.4f} lr_scale {scale:.3f} left {left:.0f}s", flush=True)
sync()
train_seconds = time.time() - t0
if timed_from is not None and timed_tokens:
    tokens_per_second = timed_tokens / (time.time() - timed_from)
else:
    tokens_per_second = step * tokens_per_step / max(train_seconds, 1e-9)
peak = bf16_peak_flops(run.device)

# ---------------------------------------------------------------- summary
print(f"steps: {step}")
print(f"tokens: {step * tokens_per_step}")
print(f"tokens_per_second: {tokens_per_second:.0f}")
print(f"mfu: {flops_per_token * tokens_per_second / peak:.4f}" if peak else "mfu: n/a")
print(f"flops_per_token: {flops_per_token:.4g}")
print(f"peak_memory_mb: {torch.cuda.max_memory_allocated() / 2**20:.0f}" if cuda else "peak_memory_mb: n/a")
print(f"params: {n_params}")
print(f"train_loss: {loss.item() * GRAD_ACCUM:.4f}")
print(f"train_seconds: {train_seconds:.1f}")
print(f"device: {torch.cuda.get_device_name(run.device) if cuda else 'cpu'}")
run.submit(model)
