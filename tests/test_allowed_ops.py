"""The scorer's operator allow-list (gpt/allowed_ops.py): ordinary language models load under it, and
an op off it is refused however the graph reaches the scorer.

The zoo below is what LLM-written genomes commonly are (GPT-2, Llama, nanochat-like, nn.Transformer,
and a grab bag of less usual layers). Each is exported exactly as `lab.submit` does, saved, loaded
by the scorer's loader and run; its logits must match the eager model's. An op the zoo needs that
the list lacks fails here, before a search spends slots on `bad_artifact`."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt import artifact
from gpt.allowed_ops import ALLOWED_OPS, is_allowed
from gpt.artifact import BadArtifact
from gpt.lab import EVAL_BATCH, export_model

V, W, T = 97, 32, 64


class Classic(nn.Module):
    """GPT-2: learned positions, LayerNorm, a causal mask buffer, masked_fill, dropout, tied head."""

    def __init__(self, act):
        super().__init__()
        self.wte, self.wpe, self.ln = nn.Embedding(V, W), nn.Embedding(T, W), nn.LayerNorm(W)
        self.attn, self.proj = nn.Linear(W, 3 * W), nn.Linear(W, W)
        self.fc, self.fc2, self.drop = nn.Linear(W, 4 * W), nn.Linear(4 * W, W), nn.Dropout(0.1)
        self.head = nn.Linear(W, V, bias=False)
        self.head.weight = self.wte.weight
        self.register_buffer("mask", torch.tril(torch.ones(T, T)).view(1, 1, T, T))
        self.act = act

    def forward(self, idx):
        B, L = idx.shape
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(L, device=idx.device)))
        q, k, v = (t.view(B, L, 4, W // 4).transpose(1, 2) for t in self.attn(self.ln(x)).split(W, dim=2))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(W // 4))
        att = self.drop(F.softmax(att.masked_fill(self.mask[:, :, :L, :L] == 0, float("-inf")), dim=-1))
        x = x + self.proj((att @ v).transpose(1, 2).contiguous().view(B, L, W))
        return self.head(self.ln(x + self.fc2(self.act(self.fc(self.ln(x))))))


class Llama(nn.Module):
    """RMSNorm module, rotary by halves, grouped-query attention (repeat_interleave), einsum, SwiGLU,
    a learned logit scale and a tanh softcap; in-place ops on intermediates."""

    def __init__(self):
        super().__init__()
        self.wte, self.norm = nn.Embedding(V, W), nn.RMSNorm(W)
        self.q, self.kv, self.o = nn.Linear(W, W, bias=False), nn.Linear(W, W, bias=False), nn.Linear(W, W, bias=False)
        self.w1, self.w3, self.w2 = nn.Linear(W, 2 * W, bias=False), nn.Linear(W, 2 * W, bias=False), nn.Linear(2 * W, W)
        self.head, self.scale = nn.Linear(W, V), nn.Parameter(torch.ones(1))
        t = torch.arange(T).float()[:, None] / (10000 ** (torch.arange(0, 4).float() / 4))
        self.register_buffer("freqs", torch.cat([t, t], -1), persistent=False)

    def forward(self, idx):
        B, L = idx.shape
        x = self.wte(idx) * math.sqrt(W)
        h = self.norm(x)
        q = self.q(h).view(B, L, 4, 8)
        k, v = self.kv(h).view(B, L, 2, 2, 8).unbind(2)
        f = self.freqs[:L]
        cos, sin = f.cos()[None, :, None], f.sin()[None, :, None]

        def rotate(u):
            return u * cos + torch.cat([-u[..., 4:], u[..., :4]], -1) * sin

        q, k = rotate(q), rotate(k).repeat_interleave(2, dim=2)
        v = v.repeat(1, 1, 2, 1)
        att = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(8)
        att = (att + torch.triu(torch.full((L, L), float("-inf"), device=idx.device), 1)).softmax(-1)
        x = x + self.o(torch.einsum("bhts,bshd->bthd", att, v).reshape(B, L, W))
        gate = F.silu(self.w1(self.norm(x)))
        gate.mul_(self.w3(self.norm(x)))
        x = x + self.w2(gate)
        logits = self.head(self.norm(x)) * self.scale
        return 30 * torch.tanh(logits / 30)


class GrabBag(nn.Module):
    """Token shift by a causal depthwise conv, cumulative-mean mixing, a top-2 mixture of experts,
    ALiBi, group and batch norm, and a pile of elementwise functions."""

    def __init__(self):
        super().__init__()
        self.wte, self.conv, self.router = nn.Embedding(V, W), nn.Conv1d(W, W, 3, groups=W), nn.Linear(W, 4)
        self.experts = nn.Parameter(torch.randn(4, W, W) * 0.1)
        self.head, self.gn, self.bn = nn.Linear(W, V), nn.GroupNorm(4, W), nn.BatchNorm1d(W)
        self.layer_scale = nn.Parameter(torch.full((W,), 0.1))

    def forward(self, idx):
        L = idx.size(1)
        x = self.wte(idx)
        x = x + self.conv(F.pad(x.transpose(1, 2), (2, 0))).transpose(1, 2)
        x = x + torch.cumsum(x, dim=1) / torch.arange(1, L + 1, device=x.device).view(1, L, 1)
        w, i = torch.topk(F.softmax(self.router(x), -1), 2, dim=-1)
        gate = (w.unsqueeze(-1) * F.one_hot(i, 4).float()).sum(-2)
        x = x + self.layer_scale * torch.einsum("bte,eij,btj->bti", gate, self.experts, x)
        x = F.normalize(x, dim=-1).clamp(-1, 1)
        x = self.bn(self.gn(x.transpose(1, 2))).transpose(1, 2)
        pos = torch.arange(L, device=x.device)
        alibi = -(pos[:, None] - pos[None, :]).abs().float()
        x = x + torch.where(pos[:, None] >= pos[None, :], alibi, float("-inf")).softmax(-1) @ x
        x = x + torch.rsqrt(x.var(-1, keepdim=True) + 1e-5) * x.pow(2).mean(-1, keepdim=True).sqrt()
        x = torch.stack([x, x.flip(-1)], 0).amax(0) - x.logsumexp(-1, keepdim=True)
        x = x * torch.exp(-x.abs()).log1p().expm1() + torch.erf(x) + x.sign() * x.abs().sqrt()
        return F.log_softmax(self.head(x.to(torch.bfloat16).float()), -1)


class TorchTransformer(nn.Module):
    """nn.TransformerEncoderLayer with a causal mask: what a genome gets from the library's own layer."""

    def __init__(self):
        super().__init__()
        self.wte, self.head = nn.Embedding(V, W), nn.Linear(W, V)
        self.layer = nn.TransformerEncoderLayer(W, 4, 2 * W, dropout=0.0, batch_first=True, norm_first=True)

    def forward(self, idx):
        mask = nn.Transformer.generate_square_subsequent_mask(idx.size(1), device=idx.device)
        return self.head(self.layer(self.wte(idx), src_mask=mask, is_causal=True))


class ComplexRotary(nn.Module):
    """Rotary embedding as complex multiplication (the original Llama code), and `.mT`/`.T` transposes."""

    def __init__(self):
        super().__init__()
        self.wte, self.head = nn.Embedding(V, W), nn.Linear(W, V)
        angles = torch.outer(torch.arange(T).float(), 1.0 / 10000 ** (torch.arange(0, W, 2).float() / W))
        self.register_buffer("freqs", torch.view_as_real(torch.polar(torch.ones_like(angles), angles)),
                             persistent=False)

    def forward(self, idx):
        x = self.wte(idx)
        x = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2)) * torch.view_as_complex(self.freqs)
        x = torch.view_as_real(x).flatten(2)
        return self.head(x.mT.mT) + x @ self.wte.weight.T


ACTIVATIONS = {"gelu": F.gelu, "gelu_tanh": lambda h: F.gelu(h, approximate="tanh"), "silu": F.silu, "mish": F.mish,
               "relu_squared": lambda h: F.relu(h).square(), "leaky_relu": F.leaky_relu, "elu": F.elu,
               "softplus": F.softplus, "hardswish": F.hardswish, "swish": lambda h: h * torch.sigmoid(h)}
ZOO = {**{f"gpt2-{name}": (lambda act=act: Classic(act)) for name, act in ACTIVATIONS.items()},
       "llama": Llama, "complex_rotary": ComplexRotary, "grab_bag": GrabBag, "torch_transformer": TorchTransformer}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_a_common_language_model_loads_under_the_allow_list_and_matches_eager(name, tmp_path):
    torch.manual_seed(0)
    model = ZOO[name]().eval()
    artifact.save(export_model(model, T, "cpu"), tmp_path)
    _, module = artifact.load(tmp_path)
    idx = torch.randint(0, V, (EVAL_BATCH, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(module(idx), model(idx), rtol=1e-4, atol=1e-4)


def test_every_allowed_name_is_an_aten_operator_of_this_torch():
    missing = sorted(name for name in ALLOWED_OPS if not hasattr(torch.ops.aten, name))
    assert not missing, f"not ATen operators in torch {torch.__version__}: {missing}"


@pytest.mark.parametrize("name, allowed", [("add", True), ("add_", True), ("mul_", True), ("__and__", True),
                                           ("_reshape_alias", False), ("as_strided", False), ("as_strided_", False),
                                           ("set_", False), ("_unsafe_index", False), ("__iand__", False),
                                           ("from_file", False), ("_nested_view_from_buffer", False)])
def test_in_place_forms_follow_their_functional_op(name, allowed):
    assert is_allowed(name) is allowed


class StridedByHand(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Embedding(V, 8), nn.Linear(8, V)

    def forward(self, idx):
        y = self.head(self.embed(idx))
        return torch.ops.aten.as_strided.default(y, list(y.shape), list(y.stride()))


def test_an_op_off_the_list_is_refused_in_the_rebuilt_graph_too():
    """The second line: whatever torch's reader and the functionalization made of the JSON, the graph
    that runs is checked again, call by call."""
    program = torch.export.export(StridedByHand(), (torch.zeros(2, 16, dtype=torch.long),))
    assert any("as_strided" in str(n.target) for n in program.graph.nodes)
    with pytest.raises(BadArtifact, match="as_strided"):
        artifact._check_graph_calls(program)


def test_an_op_off_the_list_is_refused_at_load_naming_the_op(tmp_path):
    artifact.save(torch.export.export(StridedByHand(), (torch.zeros(2, 16, dtype=torch.long),)), tmp_path)
    with pytest.raises(BadArtifact, match=r"as_strided.*gpt/allowed_ops\.py"):
        artifact.load(tmp_path)


# ------------------------------------------------------------------ kernels and the layout of their arguments

SENTINEL = 777.0
C = 8


def expanded(*shape):
    """A tensor of `shape` that owns one element (stride 0 everywhere), its storage followed by sentinel memory:
    a kernel that reads it as a dense array returns sentinels where the one value belongs."""
    memory = torch.full((4096,), SENTINEL)
    memory[0] = 0.5
    return memory[:1].view([1] * len(shape)).expand(*shape)


def _x(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(len(shape)))


A = torch.ops.aten
LAYOUT_CASES = {  # op, arguments (one of them expanded), for ops with per-channel or fused kernels
    "native_group_norm weight": (A.native_group_norm.default, lambda: (_x(2, C, 5), expanded(C), None, 2, C, 5, 2, 1e-5)),
    "native_group_norm bias": (A.native_group_norm.default, lambda: (_x(2, C, 5), None, expanded(C), 2, C, 5, 2, 1e-5)),
    "native_layer_norm": (A.native_layer_norm.default, lambda: (_x(2, 5, C), [C], expanded(C), expanded(C), 1e-5)),
    "batch_norm statistics": (A._native_batch_norm_legit_no_training.default,
                              lambda: (_x(2, C, 5), expanded(C), expanded(C), expanded(C), expanded(C), 0.1, 1e-5)),
    "batch_norm training": (A._native_batch_norm_legit_functional.default,
                            lambda: (_x(2, C, 5), expanded(C), expanded(C), torch.zeros(C), torch.ones(C), True, 0.1,
                                     1e-5)),
    "rms_norm": (A.rms_norm.default, lambda: (_x(2, 5, C), [C], expanded(C), 1e-5)),
    "embedding": (A.embedding.default, lambda: (expanded(10, 4), torch.tensor([3, 9]))),
    "convolution": (A.convolution.default, lambda: (_x(2, C, 5), expanded(4, C, 3), expanded(4), [1], [0], [1], False,
                                                    [0], 1)),
    "prelu": (A.prelu.default, lambda: (_x(2, C, 5), expanded(C))),
    "attention": (A.scaled_dot_product_attention.default, lambda: (expanded(1, 2, 4, 8), expanded(1, 2, 6, 8),
                                                                   expanded(1, 2, 6, 8))),
    "attention mask": (A.scaled_dot_product_attention.default, lambda: (_x(1, 2, 4, 8), _x(1, 2, 6, 8), _x(1, 2, 6, 8),
                                                                        expanded(1, 2, 4, 6))),
    "pool": (A.max_pool1d.default, lambda: (expanded(2, C, 5), [2])),
    "matmul": (A.mm.default, lambda: (expanded(5, C), expanded(C, 4))),
    "batched matmul": (A.baddbmm.default, lambda: (expanded(2, 5, 4), expanded(2, 5, C), expanded(2, C, 4))),
    "index_select": (A.index_select.default, lambda: (expanded(2, C, 5), 1, torch.tensor([1, 7]))),
    "cumsum": (A.cumsum.default, lambda: (expanded(2, C, 5), 2)),
    "softmax": (A._softmax.default, lambda: (expanded(2, C, 5), 2, False)),
}


@pytest.mark.parametrize("case", sorted(LAYOUT_CASES))
def test_an_expanded_argument_gives_what_its_dense_copy_gives(case):
    """As the scorer runs it (`checked`), an op given a stride-0 view of one element computes what it computes
    on the dense copy: no kernel reads the memory after an argument's storage (native_group_norm did)."""
    from gpt.allowed_ops import checked

    op, make = LAYOUT_CASES[case]
    args = make()
    dense = [a.contiguous() if isinstance(a, torch.Tensor) else a for a in args]
    got, want = checked(op)(*args), op(*dense)
    got, want = (got[0], want[0]) if isinstance(got, tuple) else (got, want)
    assert not (got == SENTINEL).any()
    torch.testing.assert_close(got, want)


def test_a_group_norm_told_another_channel_count_than_its_input_has_is_refused():
    from gpt.allowed_ops import checked

    with pytest.raises(RuntimeError, match="C is 4, the input has 8 channels"):
        checked(A.native_group_norm.default)(torch.zeros(1, 8, 1), None, torch.ones(8), 1, 4, 2, 1, 1e-5)
