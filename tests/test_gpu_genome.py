"""genomes/nanochat_gpu.py: at toy size it trains on a CPU, exports and scores ok; its Muon step orthogonalizes."""
from __future__ import annotations

import ast
import math

import libcst as cst
import numpy as np
import pytest
import torch

from evo.operators.knobs import find_knobs
from gpt.static_checks import check_source

from conftest import REPO

GENOME = REPO / "genomes" / "nanochat_gpu.py"

# Toy size for two shared CPU cores: every feature stays on (a short-window layer, value
# embeddings, Muon, softcap), only the sizes shrink. SHORT_WINDOW 16 < SEQ_LEN 64 < eval 256,
# so the causality probe cuts inside and past the window.
TOY_KNOBS = {"DEPTH": 2, "WIDTH": 64, "HEAD_DIM": 16, "MLP_RATIO": 2, "SEQ_LEN": 64, "BATCH_SIZE": 4,
             "GRAD_ACCUM": 1, "WINDOW_PATTERN": "SL", "SHORT_WINDOW": 16, "VALUE_EMBEDS": True,
             "WARMUP_FRACTION": 0.0, "LOG_EVERY": 1000}


def set_knobs(source: str, values: dict) -> str:
    """The genome with module-level knob assignments given new literal values (libcst: every
    other byte stays). Every name must be an existing knob (per evo's own `find_knobs`)."""
    known = {k.name for k in find_knobs(source)}
    missing = set(values) - known
    assert not missing, f"not knobs of the genome: {missing}"

    class Setter(cst.CSTTransformer):
        def leave_Assign(self, original, updated):
            target = updated.targets[0].target if len(updated.targets) == 1 else None
            if isinstance(target, cst.Name) and target.value in values:
                return updated.with_changes(value=cst.parse_expression(repr(values[target.value])))
            return updated

        def leave_FunctionDef(self, original, updated):  # module level only: never inside functions
            return original

        def leave_ClassDef(self, original, updated):
            return original

    return cst.parse_module(source).visit(Setter()).code


def test_set_knobs_rewrites_only_values():
    source = GENOME.read_text()
    toy = set_knobs(source, TOY_KNOBS)
    got = {k.name: k.value for k in find_knobs(toy)}
    assert {name: got[name] for name in TOY_KNOBS} == TOY_KNOBS
    assert len(toy.splitlines()) == len(source.splitlines())
    assert "# evo: range(1, 24)" in toy  # annotations survive


def test_genome_passes_static_checks():
    assert check_source(GENOME.read_text()) == []


def _function(name: str):
    """One top-level function of the genome, without running the script (it connects to the lab)."""
    tree = ast.parse(GENOME.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    namespace = {"torch": torch}
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(GENOME), "exec"), namespace)
    return namespace[name]


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (3, 96, 128)])
def test_muon_orthogonalization_gives_near_orthogonal_updates(shape):
    """Newton-Schulz with the quintic coefficients maps every singular value of G (after
    scaling G to norm 1) into roughly [0.7, 1.2] in 5 steps: the update's singular values
    are all near 1, so U^T U (or U U^T for wide matrices) is near the identity, and the
    singular vectors are G's own (U has G's polar factor direction)."""
    orthogonalize = _function("orthogonalize")
    g = torch.Generator().manual_seed(0)
    G = torch.randn(*shape, generator=g)
    U = orthogonalize(G, 5)
    assert U.shape == G.shape and U.dtype == torch.float32
    s = torch.linalg.svdvals(U)
    assert float(s.min()) > 0.6 and float(s.max()) < 1.25, s
    # the same directions as the exact polar factor U V^T of G
    u, _, vh = torch.linalg.svd(G, full_matrices=False)
    polar = u @ vh
    cos = (U * polar).sum(dim=(-2, -1)) / (U.norm(dim=(-2, -1)) * polar.norm(dim=(-2, -1)))
    assert float(cos.min()) > 0.98
    # plain SGD's update (G itself) is far from orthogonal: the test can tell the difference
    s_raw = torch.linalg.svdvals(G / torch.linalg.matrix_norm(G, ord=2, keepdim=True))
    assert float(s_raw.min()) < 0.6


def _class(name: str):
    tree = ast.parse(GENOME.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
    namespace = {"torch": torch}
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(GENOME), "exec"), namespace)
    return namespace[name]


def test_adamw_matches_the_textbook_update():
    """The genome's own AdamW (no torch.optim: that would import torch._dynamo) against Adam
    with bias correction and decoupled weight decay, written out in numpy."""
    AdamW = _class("AdamW")
    g = torch.Generator().manual_seed(1)
    p = torch.nn.Parameter(torch.randn(5, 3, generator=g))
    opt = AdamW([dict(params=[p], lr=0.01)], betas=(0.8, 0.95), eps=1e-8, weight_decay=0.1)
    ref, m, v = p.detach().double().numpy().copy(), 0.0, 0.0
    for t in range(1, 4):
        grad = torch.randn(5, 3, generator=g)
        p.grad = grad.clone()
        opt.step()
        gn = grad.double().numpy()
        m = 0.8 * m + 0.2 * gn
        v = 0.95 * v + 0.05 * gn * gn
        ref = ref * (1 - 0.01 * 0.1) - 0.01 * (m / (1 - 0.8**t)) / (np.sqrt(v / (1 - 0.95**t)) + 1e-8)
        assert np.allclose(p.detach().double().numpy(), ref, atol=1e-6)


def test_layer_windows_pattern():
    layer_windows = _function("layer_windows")
    assert layer_windows(8, "SSSL") == list("SSSLSSSL")
    assert layer_windows(6, "SSSL") == list("SSSLSL")  # the last layer is always long
    assert layer_windows(1, "S") == ["L"]


def test_toy_genome_trains_submits_and_scores_ok(tmp_path, small_dataset):
    """The whole slot on the CPU: train a few seconds, torch.export at the scoring shape,
    32 x 256 (past SEQ_LEN 64: rotary tables and masks follow T), score, and pass
    causality (short windows, value embeddings), canary and stateless."""
    from gpt.runner import SlotJob, run_slot

    genome = tmp_path / "nanochat_toy.py"
    genome.write_text(set_knobs(GENOME.read_text(), TOY_KNOBS))
    result = run_slot(SlotJob(genome=str(genome), dataset=str(small_dataset.path), out_dir=str(tmp_path / "eval"),
                              budget_s=4.0, grace_s=60.0, device="cpu", threads=1, eval_tokens=8192))
    stdout = (tmp_path / "eval" / "stdout.txt").read_text()
    assert result.status == "ok", (result.reason, result.detail, result.stderr_tail)
    assert result.causality == result.canary == result.stateless == "pass"
    assert result.steps and result.steps >= 10
    summary = dict(line.split(": ", 1) for line in stdout.splitlines() if ": " in line and not line.startswith("step "))
    assert float(summary["tokens_per_second"]) > 0 and summary["mfu"] == "n/a"
    assert math.isfinite(float(summary["train_loss"]))
    assert result.val_bpb < 7.0, result.val_bpb  # uniform over bytes is 8 bits per byte
    print(f"toy nanochat_gpu on CPU: val_bpb {result.val_bpb:.3f} after {result.steps} steps; "
          f"{summary['tokens_per_second']} tokens/s")
