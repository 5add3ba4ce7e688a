"""Red team of the artifact boundary: `gpt.artifact.load(folder)`, `.module()` and a forward call.

An untrusted genome writes program.json (torch.export's JSON schema) and weights.safetensors;
the trusted scorer loads them with `gpt.artifact.load`, calls `program.module()` and runs the
module on token batches (`gpt.score.score`). Every test below builds a hostile artifact in
tmp_path and asserts the SAFE outcome:

- the loader refuses it with `gpt.artifact.BadArtifact` (the only clean refusal), or
- it loads and runs, and is harmless: no proof file appears, no secret reaches the output,
  no state survives a call unnoticed, and the scorer's probes see what the model does.

Written by an adversary with the source in hand; each of its findings (a target-reading
model that replayed its probes from buffers written through views, uninitialized memory as a
side channel, `**` in shape expressions, crashes that were not BadArtifact, strings smuggled
in numeric fields, weights of the wrong shape) was a strict xfail until fixed and is now an
ordinary test. The honest artifacts at the top must keep loading and reproducing the eager
model's logits.
"""
from __future__ import annotations

import copy
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt import artifact, score
from gpt.artifact import BadArtifact

REPO = Path(__file__).resolve().parents[1]
REDTEAM = Path("/tmp/artifact-redteam")
SECRET = REDTEAM / "secret.txt"
SECRET_TEXT = "TOP-SECRET-1234567890"
VOCAB = 10  # the tiny honest model's vocabulary
DYNAMIC = ({0: torch.export.Dim("batch", min=1, max=1024), 1: torch.export.Dim("seq", min=1, max=256)},)


# ---------------------------------------------------------------- helpers


def export(model: nn.Module, max_seq: int = 256) -> torch.export.ExportedProgram:
    dims = ({0: torch.export.Dim("batch", min=1, max=1024), 1: torch.export.Dim("seq", min=1, max=max_seq)},)
    return torch.export.export(model, (torch.zeros(2, 16, dtype=torch.long),), dynamic_shapes=dims)


def save(model: nn.Module, folder: Path, max_seq: int = 256) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    artifact.save(export(model, max_seq), folder)
    return folder


def proof(name: str) -> Path:
    """A file that exists only if an attack ran code of its choosing."""
    REDTEAM.mkdir(parents=True, exist_ok=True)
    path = REDTEAM / f"pwned-{name}"
    if path.exists():
        path.unlink()
    return path


def tokens(batch: int = 2, seq: int = 16) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(batch * 1000 + seq))


def load_and_run(folder: Path, x: torch.Tensor | None = None):
    """What the scorer does: load (BadArtifact is a clean refusal), module(), one forward.

    Returns None when refused, else (program, module, output or the forward's exception).
    A forward that raises is clean too (score() reports it as score_error); load() or
    module() raising anything but BadArtifact is not (score() lets it escape)."""
    try:
        program, module = artifact.load(folder)
    except BadArtifact:
        return None
    try:
        with torch.no_grad():
            out = module(tokens() if x is None else x)
    except Exception as exc:  # noqa: BLE001 - a failing forward is a clean score_error
        out = exc
    return program, module, out


def assert_refused(folder: Path) -> None:
    with pytest.raises(BadArtifact):
        artifact.load(folder)


SEQ_LEN = 64  # the scorer runs in these tests: gpt.score.score on the small dataset, as tests/test_score.py does
EVAL_TOKENS = 4096


def score_artifact(model: nn.Module, dataset, tmp_path, probe_seed: int = 0):
    """What the slot runner does with a submitted model: lab.export_model, artifact.save, score.score."""
    from gpt.lab import export_model

    folder = tmp_path / f"scored-{probe_seed}"
    folder.mkdir()
    artifact.save(export_model(model, SEQ_LEN, "cpu"), folder)
    return score.score({"artifact": str(folder), "dataset": str(dataset.path), "seq_len": SEQ_LEN,
                        "eval_tokens": EVAL_TOKENS, "device": "cpu", "probe_seed": probe_seed})


class Tiny(nn.Module):
    """The tiny honest model every tampered artifact starts from: embedding, a non-persistent
    buffer, a tied output head. Graph: p_emb_weight, b_buf, idx -> embedding, add, numpy_t, matmul."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8)
        self.register_buffer("buf", torch.ones(8), persistent=False)

    def forward(self, idx):
        return (self.emb(idx) + self.buf) @ self.emb.weight.T


@pytest.fixture(scope="module")
def honest_files(tmp_path_factory) -> tuple[dict, bytes]:
    torch.manual_seed(0)
    folder = save(Tiny(), tmp_path_factory.mktemp("honest"))
    return json.loads((folder / "program.json").read_text()), (folder / "weights.safetensors").read_bytes()


@pytest.fixture
def tamper(honest_files, tmp_path):
    """tamper(edit) -> folder holding the honest tiny artifact with `edit(doc)` applied to its JSON.

    `edit` changes the dict in place, or returns a replacement (a dict, or the JSON text)."""
    counter = iter(range(1000))

    def make(edit=None, weights: bytes | None = None) -> Path:
        folder = tmp_path / f"artifact{next(counter)}"
        folder.mkdir()
        doc = copy.deepcopy(honest_files[0])
        result = edit(doc) if edit else None
        doc = doc if result is None else result
        (folder / "program.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))
        (folder / "weights.safetensors").write_bytes(honest_files[1] if weights is None else weights)
        return folder

    return make


def graph(doc: dict) -> dict:
    return doc["graph_module"]["graph"]


def node(doc: dict, name: str) -> dict:
    return next(n for n in graph(doc)["nodes"] if n["name"] == name)


def input_spec(doc: dict, kind: str) -> dict:
    return next(s[kind] for s in doc["graph_module"]["signature"]["input_specs"] if kind in s)


def root_signature(doc: dict) -> dict:
    return doc["graph_module"]["module_call_graph"][0]["signature"]


def insert_node(doc: dict, target: str, inputs: list[tuple[str, dict]], out: str | None = "evil") -> None:
    """Put a node calling `target` at the front of the graph; its output (if any) is a tensor `out`."""
    g = graph(doc)
    g["nodes"].insert(0, {"target": target, "inputs": [{"name": n, "arg": a, "kind": 1} for n, a in inputs],
                          "outputs": [{"as_tensor": {"name": out}}] if out else [], "metadata": {},
                          "is_hop_single_tensor_return": None, "name": out or "evil_call"})
    if out:
        g["tensor_values"][out] = copy.deepcopy(g["tensor_values"]["b_buf"])


def set_shape_expr(doc: dict, expr: str) -> None:
    """Replace the symbolic size of the user input's batch dimension."""
    graph(doc)["tensor_values"]["idx"]["sizes"][0]["as_expr"]["expr_str"] = expr


def rename(doc: dict, old: str, new: str) -> None:
    """Rename a graph value everywhere the schema names it."""
    def walk(value):
        if isinstance(value, dict):
            for key in value:
                if key in ("name", "as_name") and value[key] == old:
                    value[key] = new
                else:
                    walk(value[key])
        elif isinstance(value, list):
            for item in value:
                walk(item)
    walk(doc["graph_module"])
    values = graph(doc)["tensor_values"]
    values[new] = values.pop(old)


def safetensors_blob(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def tiny_weights() -> tuple[dict, bytes]:
    """A safetensors header and data for the tiny model, written by hand."""
    emb = torch.randn(VOCAB, 8).numpy().tobytes()
    buf = torch.ones(8).numpy().tobytes()
    header = {"emb.weight": {"dtype": "F32", "shape": [VOCAB, 8], "data_offsets": [0, len(emb)]},
              "buf": {"dtype": "F32", "shape": [8], "data_offsets": [len(emb), len(emb) + len(buf)]}}
    return header, emb + buf


# ---------------------------------------------------------------- honest artifacts load and match eager


class GPT(nn.Module):
    """A small GPT: token and position embeddings, pre-LN blocks with causal SDPA and tanh-GELU MLPs,
    a final LayerNorm, an output head tied to the token embedding, a non-persistent position buffer
    and a bf16 round trip before the head."""

    def __init__(self, vocab=32, width=16, heads=2, layers=2, max_seq=64):
        super().__init__()
        self.heads = heads
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(max_seq, width)
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            block = nn.Module()
            block.ln1, block.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
            block.qkv, block.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
            block.fc, block.out = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
            self.blocks.append(block)
        self.lnf = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.wte.weight
        self.register_buffer("positions", torch.arange(max_seq), persistent=False)

    def forward(self, idx):
        b, t = idx.shape
        x = self.wte(idx) + self.wpe(self.positions[:t])
        for block in self.blocks:
            q, k, v = block.qkv(block.ln1(x)).split(x.shape[-1], dim=-1)
            q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, -1)
            x = x + block.proj(att)
            x = x + block.out(F.gelu(block.fc(block.ln2(x)), approximate="tanh"))
        return self.head(self.lnf(x).to(torch.bfloat16).float())


def test_honest_gpt_loads_and_reproduces_eager_logits(tmp_path):
    torch.manual_seed(0)
    model = GPT().eval()
    program, module = artifact.load(save(model, tmp_path, max_seq=64))
    for batch, seq in ((1, 1), (3, 17), (8, 64)):
        x = torch.randint(0, 32, (batch, seq))
        with torch.no_grad():
            torch.testing.assert_close(module(x), model(x), rtol=0, atol=1e-5)


def test_honest_gpt_has_no_graph_mutations_and_scores_the_same_twice(tmp_path):
    torch.manual_seed(0)
    program, module = artifact.load(save(GPT(), tmp_path, max_seq=64))
    assert score.graph_mutations(program) == []
    x = torch.randint(0, 32, (2, 64))
    with torch.no_grad():
        assert torch.equal(module(x), module(x))


def test_honest_tiny_model_loads_and_matches_eager(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    _, module = artifact.load(save(model, tmp_path))
    x = tokens(4, 32)
    with torch.no_grad():
        torch.testing.assert_close(module(x), model(x), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- (a) no code of the artifact's choosing runs


@pytest.mark.parametrize("expr", [
    "__import__('os').system('touch {proof}')",
    "eval('1')",
    "exec('import os')",
    "Symbol('s95').__class__",
    "(lambda: 1)()",
    "open('{secret}')",
    "Symbol('s95; import os', positive=True)",
    "Integer(1).func.__globals__",
    "s95\n__import__('os')",
])
def test_symbolic_expression_that_is_python_code_is_refused(tamper, expr):
    path = proof("sympy")
    folder = tamper(lambda d: set_shape_expr(d, expr.format(proof=path, secret=SECRET)))
    assert_refused(folder)
    assert not path.exists()


@pytest.mark.parametrize("target", [
    "torch.load",
    "torch.ops.load_library",
    "torch.save",
    "builtins.exec",
    "math.pow",
    "os.system",
    "torch.ops.higher_order.cond",
    "torch.ops.aten.add.Tensor.__call__",
    "torch.ops.aten.name.upper",  # an attribute of the namespace that is not an operator
    "torch.ops.aten.__class__.__init__",
    "torch.ops.aten.add._op",
    "torch.ops.aten.from_file.default",
    "torch.ops.aten._print.default",
    "torch.ops.aten.save.default",
    "torch.ops.aten.load.default",
    "torch.ops.aten.no_such_op.default",
    # ATen operators off gpt/allowed_ops.py: unchecked or hand-strided views, unsafe indexing, sparse,
    # nested and quantized tensors, fused multi-tensor ops
    "torch.ops.aten._reshape_alias.default",
    "torch.ops.aten.as_strided.default",
    "torch.ops.aten._unsafe_index.Tensor",
    "torch.ops.aten._unsafe_index_put.default",
    "torch.ops.aten._nested_view_from_buffer.default",
    "torch.ops.aten._sparse_coo_tensor_with_dims_and_tensors.default",
    "torch.ops.aten._make_per_tensor_quantized_tensor.default",
    "torch.ops.aten._foreach_add.List",
    "torch.ops.aten.set_.source_Storage",
    "torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default",  # reads K, V past their storage
    "torch.ops.aten._scaled_dot_product_efficient_attention.default",
])
def test_node_target_outside_the_aten_allow_list_is_refused(tamper, target):
    assert_refused(tamper(lambda d: node(d, "add").update(target=target)))


def test_from_file_cannot_read_a_secret_into_the_output(tamper):
    SECRET.write_text(SECRET_TEXT)
    for arg in ({"as_string": str(SECRET)}, {"as_int": str(SECRET)}, {"as_strings": [str(SECRET)]}):
        folder = tamper(lambda d: insert_node(d, "torch.ops.aten.from_file.default", [("filename", arg)]))
        assert_refused(folder)


@pytest.mark.parametrize("op, arg", [
    ("torch.ops.aten._print.default", "s"),
    ("torch.ops.aten.add.Tensor", "alpha"),  # a string where the op takes a number
    ("torch.ops.aten.warn.default", "message"),
])
def test_string_argument_outside_the_mode_names_is_refused(tamper, op, arg):
    folder = tamper(lambda d: insert_node(d, op, [(arg, {"as_string": "hello"})], out=None))
    assert_refused(folder)


def test_string_smuggled_in_a_numeric_argument_is_refused(tamper):
    folder = tamper(lambda d: insert_node(d, "torch.ops.aten.warn.default",
                                          [("message", {"as_int": "a string the allow-list never saw"})], out=None))
    assert_refused(folder)


@pytest.mark.parametrize("name", ["add; import os", "add = __import__('os')", "a b", "add\n", "x.y", "1add", ""])
def test_node_name_that_is_not_an_identifier_is_refused(tamper, name):
    assert_refused(tamper(lambda d: rename(d, "add", name)))


@pytest.mark.parametrize("name", ["emb.weight; import os", "emb.weight\")", "emb..weight", "emb/weight", "../x"])
def test_parameter_name_that_is_not_a_dotted_name_is_refused(tamper, name):
    assert_refused(tamper(lambda d: input_spec(d, "parameter").update(parameter_name=name)))


@pytest.mark.parametrize("names", [["idx=__import__('os').system('x')"], ["idx", "other"], [], "idx"])
def test_forward_argument_names_other_than_one_identifier_are_refused(tamper, names):
    assert_refused(tamper(lambda d: root_signature(d).update(forward_arg_names=names)))


def test_guards_code_is_never_executed(tamper):
    path = proof("guards")
    code = f"__import__('pathlib').Path('{path}').touch() or True"
    result = load_and_run(tamper(lambda d: d.update(guards_code=[code, f"L['idx'].size()[0] == 2 and {code}"])))
    assert result is None or not isinstance(result[2], Exception)
    assert not path.exists()


@pytest.mark.parametrize("spec", ["in_spec", "out_spec"])
def test_pytree_spec_other_than_forward_idx_to_logits_is_refused(tamper, spec):
    def edit(d):
        sig = root_signature(d)
        sig[spec] = sig[spec].replace('"type": null', '"type": "builtins.eval"', 1)
    assert_refused(tamper(edit))


def test_namedtuple_pytree_fields_are_refused(tamper):
    assert_refused(tamper(lambda d: d["graph_module"].update(
        treespec_namedtuple_fields={"os.system": {"field_names": ["a"]}})))


@pytest.mark.parametrize("kind, value", [
    ("as_graph", {"name": "sub", "graph": {"inputs": [], "outputs": [], "nodes": [], "tensor_values": {},
                                           "sym_int_values": {}, "sym_bool_values": {}, "is_single_tensor_return": False}}),
    ("as_operator", "torch.load"),
    ("as_custom_obj", {"name": "obj", "class_fqn": "__torch__.torch.classes.evil"}),
    ("as_string_to_argument", {"k": {"as_int": 1}}),
])
def test_argument_that_is_a_subgraph_operator_or_object_is_refused(tamper, kind, value):
    assert_refused(tamper(lambda d: node(d, "add")["inputs"][1].update(arg={kind: value})))


def test_script_objects_are_refused(tamper):
    assert_refused(tamper(lambda d: graph(d).update(
        custom_obj_values={"obj": {"name": "obj", "class_fqn": "__torch__.torch.classes.evil"}})))
    assert_refused(tamper(lambda d: d["graph_module"]["signature"]["input_specs"].insert(
        0, {"custom_obj": {"arg": {"name": "obj", "class_fqn": "x"}, "custom_obj_name": "obj"}})))


def test_node_metadata_is_dropped_before_torch_reads_it(tamper):
    meta = {"stack_trace": "x", "nn_module_stack": "a,b,os.system", "source_fn_stack": "x,torch.load",
            "custom": json.dumps({"evil": 1}), "torch_fn": "a;b", "from_node": "[{\"name\": 1}]"}
    def edit(d):
        for n in graph(d)["nodes"]:
            n["metadata"] = dict(meta)
        d["graph_module"]["metadata"] = {"custom": json.dumps({"evil": 1})}
    program, _, out = load_and_run(tamper(edit))
    assert not isinstance(out, Exception)
    assert not any("source_fn_stack" in n.meta or "custom" in n.meta for n in program.graph.nodes)


@pytest.mark.parametrize("key", ["__import__('os')", "s95 + 1", "S0", "x"])
def test_range_constraint_on_something_other_than_a_symbol_is_refused(tamper, key):
    assert_refused(tamper(lambda d: d["range_constraints"].update({key: {"min_val": 1, "max_val": 2}})))


@pytest.mark.parametrize("dialect", ["EXIR", "os.system", ""])
def test_unknown_verifier_dialect_is_refused(tamper, dialect):
    assert_refused(tamper(lambda d: d.update(verifiers=[dialect])))


def test_duplicate_json_keys_are_read_the_same_way_by_the_check_and_by_torch(tamper):
    benign = '"target": "torch.ops.aten.add.Tensor"'
    evil = '"target": "torch.load"'
    assert_refused(tamper(lambda d: json.dumps(d).replace(benign, f"{benign}, {evil}")))
    result = load_and_run(tamper(lambda d: json.dumps(d).replace(benign, f"{evil}, {benign}")))
    assert result is not None and not isinstance(result[2], Exception)


# ---------------------------------------------------------------- (c) no state survives a call unnoticed


class Stateful(nn.Module):
    """Adds 1 to a buffer on every call and lets the logits depend on it."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.emb = nn.Embedding(VOCAB, 8)
        self.register_buffer("count", torch.zeros(8))
        self.register_buffer("var", torch.ones(8))

    def forward(self, idx):
        if self.how == "batch_norm":  # training-mode statistics: written although the op's schema says no write
            h = torch.nn.functional.batch_norm(self.emb(idx).transpose(1, 2), self.count, self.var, training=True)
            return h.transpose(1, 2) @ self.emb.weight.T
        if self.how == "direct":
            self.count.add_(1.0)
        elif self.how == "foreach":
            torch._foreach_add_([self.count], 1.0)  # Tensor(a!)[]: the alias is on the list's elements
        elif self.how == "split":
            self.count.split(8)[0].add_(1.0)  # written through operator.getitem of a view op
        elif self.how == "unbind":
            self.count.unsqueeze(0).unbind(0)[0].add_(1.0)
        elif self.how == "unsafe_view":
            torch.ops.aten._unsafe_view(self.count, [8]).add_(1.0)  # a view whose schema says it is not one
        return (self.emb(idx) + self.count) @ self.emb.weight.T


def test_a_direct_buffer_write_is_refused_at_load(tmp_path):
    with pytest.raises(BadArtifact, match="changes its buffers"):
        artifact.load(save(Stateful("direct"), tmp_path))


def test_buffer_mutation_declared_in_the_signature_is_refused(tamper):
    def edit(d):
        d["graph_module"]["signature"]["output_specs"].insert(
            0, {"buffer_mutation": {"arg": {"name": "add"}, "buffer_name": "buf"}})
        graph(d)["outputs"].insert(0, {"as_tensor": {"name": "add"}})
    assert_refused(tamper(edit))


@pytest.mark.parametrize("how", ["foreach", "split", "unbind", "unsafe_view", "batch_norm"])
def test_a_buffer_written_through_an_alias_is_refused_at_load(tmp_path, how):
    """Functionalizing the graph at load turns every hidden in-place write into a declared mutation
    (`_foreach_add_` is off the allow-list too, so whichever check meets it first refuses it)."""
    with pytest.raises(BadArtifact, match="changes its buffers|_foreach_add"):
        artifact.load(save(Stateful(how), tmp_path))


class EvalTimeLearner(nn.Module):
    """Counts the bigrams of every batch it is given into a buffer (written through a split() view,
    which graph_mutations misses) and predicts later batches from them: test-time training on
    the evaluation splits."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.register_buffer("counts", torch.zeros(vocab, vocab))

    def forward(self, idx):
        v = self.vocab
        table = self.counts.split(v)[0]
        logits = 3.0 * torch.log1p(table[idx])  # from the batches before this one only: causal
        pairs = (idx * v + torch.roll(idx, -1, 1)).reshape(-1)
        not_last = (torch.arange(idx.shape[1]) < idx.shape[1] - 1).float().expand(idx.shape).reshape(-1)
        table.add_(torch.zeros(v * v).index_add(0, pairs, not_last).view(v, v))
        return logits


def test_eval_time_learner_is_flagged_by_the_repeated_batch(small_dataset, tmp_path):
    result = score_artifact(EvalTimeLearner(small_dataset.tokenizer.vocab_size), small_dataset, tmp_path)
    assert (result.status, result.reason) == ("failed", "bad_artifact")  # its hidden buffer writes, at load
    assert "changes its buffers" in result.detail


class ReplayPeek(nn.Module):
    """Cheats, and passes every probe: it predicts token t + 1 by reading it out of its input, and
    remembers every batch it is given (the input rows, and the token it predicted at each position)
    in buffers written through split() views, which graph_mutations misses. A batch whose rows
    start like the rows of a remembered batch, row for row (the scorer's causality copy and its
    repeated batch are such copies of a scoring batch, in whatever order they come), gets along
    each row's common prefix exactly the predictions the remembered batch got: no prefix moves
    and no repeat drifts. Rows that hold `marker` (the canary prefix) are never replayed, so
    planted canaries and their controls are both simply read, and score alike."""

    def __init__(self, vocab: int, marker: list[int], slots: int = 16, rows: int = 32, scale: float = 12.0):
        super().__init__()
        self.vocab, self.marker, self.slots, self.rows, self.scale = vocab, marker, slots, rows, scale
        # one column more than the longest sequence: a slice of them is never the whole buffer
        self.register_buffer("seen", torch.full((slots * rows, SEQ_LEN + 1), -1, dtype=torch.long))
        self.register_buffer("said", torch.full((slots * rows, SEQ_LEN + 1), -1, dtype=torch.long))
        self.register_buffer("calls", torch.zeros(1, dtype=torch.long))

    def forward(self, idx):
        b, t = idx.shape
        seen, said, calls = self.seen.split(len(self.seen))[0], self.said.split(len(self.said))[0], self.calls.split(1)[0]
        pos = torch.arange(t)
        target = torch.where(pos < t - 1, torch.roll(idx, -1, 1), torch.full_like(idx, -1))  # -1: unknown
        # row r against row r of each remembered batch: the length of their common prefix
        aligned = torch.arange(self.slots).unsqueeze(0) * self.rows + (torch.arange(b) % self.rows).unsqueeze(1)
        common = torch.cumprod((seen[:, :t][aligned] == idx.unsqueeze(1)).long(), -1).sum(-1)  # [b, slots]
        marked = torch.ones_like(idx, dtype=torch.bool)
        for j, token in enumerate(self.marker):
            marked = marked & (torch.roll(idx, -j, 1) == token)
        common = common * (~marked.any(1)).long().unsqueeze(1)
        matching = (common >= 1).long().sum(0)
        best = torch.argmax(matching * 100000 + common.sum(0))
        replay = common[:, best] * (matching[best] * 2 >= b).long()  # [b]: a copy of a remembered batch
        said_before = said[:, :t][aligned[:, best]]
        token = torch.where(pos.unsqueeze(0) < replay.unsqueeze(1), said_before, target)
        logits = F.one_hot(token.clamp(min=0), self.vocab).float() * self.scale * (token >= 0).unsqueeze(-1).float()
        slot = (calls % self.slots) * self.rows + torch.arange(b) % self.rows
        seen[:, :t].index_copy_(0, slot, idx)
        said[:, :t].index_copy_(0, slot, token)
        calls.add_(1)
        return logits


@pytest.mark.parametrize("probe_seed", [0, 3])
def test_model_that_reads_the_targets_and_remembers_batches_is_not_scored_ok(small_dataset, tmp_path, probe_seed):
    tok = small_dataset.tokenizer
    model = ReplayPeek(tok.vocab_size, tok.encode("# canary ").tolist())
    result = score_artifact(model, small_dataset, tmp_path, probe_seed)
    assert result.status != "ok", (result.val_bpb, result.heldout_bpb)


class UninitializedMemory(nn.Module):
    """Returns what aten.empty_like finds in memory: freed tensors of earlier calls (their tokens)."""

    def forward(self, idx):
        leftover = torch.empty_like(idx).clamp(0, VOCAB - 1)
        return F.one_hot(leftover, VOCAB).float() + 0.0 * idx.unsqueeze(-1)


def test_output_does_not_depend_on_what_earlier_calls_left_in_memory(tmp_path):
    """The scorer runs in deterministic mode, which fills every new tensor: aten.empty hands out no leftovers."""
    _, module = artifact.load(save(UninitializedMemory(), tmp_path))
    x = torch.zeros(32, 256, dtype=torch.long)
    outputs = []
    with torch.no_grad(), score._fresh_memory():
        for value in range(1, 6):
            earlier = torch.full((32, 256), value, dtype=torch.long)
            module(earlier)
            del earlier
            outputs.append(module(x).argmax(-1))
    assert all(torch.equal(outputs[0], other) for other in outputs[1:])


# ---------------------------------------------------------------- (d) the loader fails cleanly or not at all


@pytest.mark.parametrize("edit", [
    pytest.param(lambda d: d.update(torch_version=[0]), id="torch_version-list"),
    pytest.param(lambda d: d.update(opset_version={"aten": [1]}), id="opset_version-list"),
    pytest.param(lambda d: node(d, "add").update(inputs=5), id="node-inputs-int"),
    pytest.param(lambda d: d.update(verifiers=[{}]), id="verifiers-of-dicts"),
    pytest.param(lambda d: d["graph_module"]["signature"]["input_specs"][0].update(parameter=[]),
                 id="input-spec-body-list"),
    pytest.param(lambda d: d["graph_module"]["signature"].update(input_specs=5), id="input-specs-int"),
    pytest.param(lambda d: d["graph_module"].update(module_call_graph=5), id="module-call-graph-int"),
    pytest.param(lambda d: d["range_constraints"]["s95"].update(min_val="x"), id="range-min-string"),
    pytest.param(lambda d: d["range_constraints"]["s95"].update(max_val=float("nan")), id="range-max-nan"),
    pytest.param(lambda d: d["range_constraints"]["s95"].update(min_val=float("inf")), id="range-min-infinity"),
    pytest.param(lambda d: d.update(range_constraints={"s95": [1]}), id="range-list"),
    pytest.param(lambda d: d.update(schema_version={"major": 99, "minor": 0}), id="schema-version-99"),
    pytest.param(lambda d: d.update(schema_version="8.20"), id="schema-version-string"),
    pytest.param(lambda d: graph(d).update(nodes={"a": 1}), id="nodes-dict"),
    pytest.param(lambda d: graph(d)["nodes"].append(5), id="node-int"),
    pytest.param(lambda d: node(d, "add")["inputs"].append({"name": "alpha", "arg": {}}), id="empty-argument"),
    pytest.param(lambda d: node(d, "add")["inputs"][0].update(arg={"as_tensor": {"name": "missing"}}),
                 id="argument-names-a-missing-value"),
    pytest.param(lambda d: graph(d)["tensor_values"]["add"].update(dtype=999), id="dtype-999"),
    pytest.param(lambda d: graph(d)["tensor_values"]["add"]["device"].update(type="evil"), id="device-evil"),
    pytest.param(lambda d: graph(d)["tensor_values"]["add"]["sizes"].append({"as_int": -5}), id="negative-size"),
    pytest.param(lambda d: graph(d)["tensor_values"]["add"]["sizes"].append({"as_int": 2**62}), id="huge-size"),
    pytest.param(lambda d: graph(d)["tensor_values"]["idx"]["sizes"][0]["as_expr"].update(hint={"as_int": "x"}),
                 id="hint-string"),
    pytest.param(lambda d: graph(d)["tensor_values"].pop("add"), id="missing-tensor-meta"),
    pytest.param(lambda d: d["graph_module"]["signature"]["input_specs"].pop(0), id="missing-input-spec"),
    pytest.param(lambda d: graph(d)["inputs"].pop(1), id="missing-graph-input"),
    pytest.param(lambda d: node(d, "add").update(target="torch.ops.aten.add.Scalar"), id="wrong-overload"),
])
def test_malformed_program_is_refused_with_bad_artifact(tamper, edit):
    result = load_and_run(tamper(edit))  # anything but BadArtifact out of load() or module() fails here
    assert result is None or result[2] is not None


@pytest.mark.parametrize("expr", ["Mod(s95, 0)", "FloorDiv(s95, 0)", "ModularIndexing(s95, 0, 2)", "CleanDiv(s95, 0)"])
def test_shape_expression_that_divides_by_zero_is_refused_with_bad_artifact(tamper, expr):
    assert_refused(tamper(lambda d: set_shape_expr(d, expr)))


def test_program_that_torchs_verifier_rejects_is_refused_with_bad_artifact(tamper, honest_files):
    import safetensors.torch as st
    weights = st.load(honest_files[1])
    weights["buf"] = weights["buf"].clone()
    # the parameter is named like the non-persistent buffer: a persistent tensor 'buf' and a non-persistent one
    folder = tamper(lambda d: input_spec(d, "parameter").update(parameter_name="buf"), weights=st.save(weights))
    assert_refused(folder)


def _rename_parameter(name):
    def edit(d):
        input_spec(d, "parameter")["parameter_name"] = name
    return edit


@pytest.mark.parametrize("edit, weight_name", [
    pytest.param(lambda d: rename(d, "idx", "lambda"), None, id="input-named-lambda"),
    pytest.param(lambda d: rename(d, "idx", "self"), None, id="input-named-self"),
    pytest.param(lambda d: root_signature(d).update(forward_arg_names=["None"]), None, id="forward-arg-None"),
    pytest.param(_rename_parameter("forward"), "forward", id="parameter-named-forward"),
    pytest.param(_rename_parameter("import"), "import", id="parameter-named-import"),
    pytest.param(_rename_parameter("validate_inputs"), "validate_inputs", id="parameter-named-validate_inputs"),
    pytest.param(_rename_parameter("graph.x"), "graph.x", id="parameter-under-graph"),
])
def test_loaded_program_always_builds_its_module(tamper, honest_files, edit, weight_name):
    import safetensors.torch as st
    weights = None
    if weight_name:
        tensors = st.load(honest_files[1])
        tensors[weight_name] = tensors["emb.weight"].clone()
        weights = st.save(tensors)
    folder = tamper(edit, weights=weights)
    try:
        artifact.load(folder)
    except BadArtifact:
        return


CHILD = textwrap.dedent("""
    import resource, sys, torch
    from gpt import artifact
    vm = int([l for l in open("/proc/self/status") if l.startswith("VmSize")][0].split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + 2**29, vm + 2**29))  # a 512 MiB allowance keeps the machine safe
    try:
        artifact.load(sys.argv[1])
        print("loaded")
    except artifact.BadArtifact:
        print("BadArtifact")
    except BaseException as exc:
        print(type(exc).__name__)
""")




@pytest.mark.parametrize("expr", [
    "Symbol('s95', positive=True, integer=True)",  # the honest expression: loads in the same harness
    pytest.param("2**2**34"),  # 97 s and 7 GB of memory without a limit, MemoryError with one
    pytest.param("10**10**8"),  # pure CPU, over two minutes
])
def test_shape_expression_is_accepted_or_refused_quickly(tamper, expr):
    folder = tamper(lambda d: set_shape_expr(d, expr))
    try:
        run = subprocess.run([sys.executable, "-c", CHILD, str(folder)], cwd=REPO, capture_output=True, text=True,
                             timeout=20, env={**os.environ, "PYTHONPATH": str(REPO)})
    except subprocess.TimeoutExpired:
        pytest.fail(f"load() still running after 20 s on the shape expression {expr!r}")
    assert run.stdout.strip().splitlines()[-1:] in (["BadArtifact"], ["loaded"]), run.stdout + run.stderr[-2000:]


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_deeply_nested_json_is_refused(tamper, depth):
    def edit(d):
        d["graph_module"]["extra"] = "DEEP"
        return json.dumps(d).replace('"DEEP"', '{"a": ' * depth + "0" + "}" * depth)
    result = load_and_run(tamper(edit))
    assert result is None or not isinstance(result[2], Exception)


def test_program_over_the_size_limit_is_refused(tamper):
    folder = tamper()
    with open(folder / "program.json", "ab") as f:
        f.truncate(artifact.MAX_PROGRAM_BYTES + 1)  # sparse
    assert_refused(folder)


def test_weights_over_the_size_limit_are_refused(tamper):
    with pytest.raises(BadArtifact):
        artifact.load(tamper(), max_weight_bytes=100)


def test_too_many_nodes_are_refused(tamper):
    assert_refused(tamper(lambda d: graph(d).update(nodes=[{}] * (artifact.MAX_NODES + 1))))


@pytest.mark.parametrize("text", ["", "null", "[]", "NaN", '{"graph_module": 1}', "\xff\xfe", '{"a": Infinity}', "{" * 10])
def test_program_that_is_not_an_exported_program_is_refused(tamper, text):
    assert_refused(tamper(lambda d: text))


def test_nan_and_infinity_in_json_numbers_are_harmless(tamper):
    def edit(d):
        node(d, "add")["inputs"].append({"name": "alpha", "arg": {"as_float": float("nan")}, "kind": 2})
        d["range_constraints"]["s95"]["max_val"] = float("inf")
    result = load_and_run(tamper(edit))
    assert result is None or isinstance(result[2], (torch.Tensor, Exception))




@pytest.mark.parametrize("which, how", [
    pytest.param(which, how, id=f"{which}-{how}")
    for which in ("program.json", "weights.safetensors")
    for how in ("symlink", "hardlink", "fifo", "directory", "missing")
])
def test_artifact_file_that_is_not_a_plain_file_of_its_own_is_refused(tamper, tmp_path, which, how):
    folder = tamper()
    target = folder / which
    SECRET.write_text(SECRET_TEXT)
    keep = tmp_path / f"outside-{which}"
    keep.write_bytes(target.read_bytes())
    target.unlink()
    if how == "symlink":
        target.symlink_to(keep)
    elif how == "hardlink":
        os.link(keep, target)
    elif how == "fifo":
        os.mkfifo(target)  # must not block the loader
    elif how == "directory":
        target.mkdir()
    assert_refused(folder)


def _header_variants():
    header, data = tiny_weights()
    overlap = copy.deepcopy(header)
    overlap["buf"]["data_offsets"] = [0, 32]
    beyond = copy.deepcopy(header)
    beyond["buf"]["data_offsets"] = [320, 10**12]
    raw = json.dumps(header).encode()
    duplicate = raw[:-1] + b', "buf": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}'
    bad_dtype = copy.deepcopy(header)
    bad_dtype["buf"]["dtype"] = "PICKLE"
    huge_shape = copy.deepcopy(header)
    huge_shape["buf"]["shape"] = [2**40, 2**40]
    return {
        "overlapping-tensors": safetensors_blob(overlap, data),
        "offsets-past-the-end": safetensors_blob(beyond, data),
        "duplicate-keys": struct.pack("<Q", len(duplicate)) + duplicate + data,
        "header-length-2**63": struct.pack("<Q", 2**63) + raw + data,
        "header-length-past-the-end": struct.pack("<Q", len(raw) + 10) + raw,
        "truncated-data": safetensors_blob(header, data[:100]),
        "unknown-dtype": safetensors_blob(bad_dtype, data),
        "huge-shape": safetensors_blob(huge_shape, data),
        "not-json-header": struct.pack("<Q", 5) + b"{{{{{" + data,
        "empty-file": b"",
        "pickle": b"\x80\x04\x95" + b"\x00" * 64,
    }


@pytest.mark.parametrize("name", list(_header_variants()))
def test_safetensors_header_tricks_are_refused(tamper, name):
    assert_refused(tamper(weights=_header_variants()[name]))


def test_weights_missing_a_tensor_the_program_reads_are_refused(tamper):
    header, data = tiny_weights()
    del header["buf"]
    assert_refused(tamper(weights=safetensors_blob(header, data[:320])))


@pytest.mark.parametrize("change", [
    pytest.param({"shape": [40, 8], "times": 4}, id="more-rows-than-the-graph-says"),
    pytest.param({"dtype": "I32"}, id="int32-where-the-graph-says-float32"),
    pytest.param({"dtype": "F16", "shape": [VOCAB, 16]}, id="float16-where-the-graph-says-float32"),
])
def test_weights_whose_shape_or_dtype_disagree_with_the_graph_are_refused(tamper, change):
    header, data = tiny_weights()
    emb = data[:320] * change.get("times", 1)
    header["emb.weight"].update({k: v for k, v in change.items() if k != "times"})
    header["emb.weight"]["data_offsets"] = [0, len(emb)]
    header["buf"]["data_offsets"] = [len(emb), len(emb) + 32]
    assert_refused(tamper(weights=safetensors_blob(header, emb + data[320:])))


# ---------------------------------------------------------------- (e) the reported number comes from a causal model


class Peek(nn.Module):
    """Reads the target (token t + 1) out of its input, with no memory: caught by the causality copy."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, idx):
        not_last = (torch.arange(idx.shape[1]) < idx.shape[1] - 1).unsqueeze(-1)
        return F.one_hot(torch.roll(idx, -1, 1), self.vocab).float() * 12.0 * not_last


def test_model_that_reads_the_targets_without_memory_fails_the_causality_probe(small_dataset, tmp_path):
    result = score_artifact(Peek(small_dataset.tokenizer.vocab_size), small_dataset, tmp_path)
    assert result.status == "flagged" and "causality" in result.reason


# ---------------------------------------------------------------- the routes torch.export.load would run
class _Payload:
    """Unpickling this creates a proof file: the classic pickle attack."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_weights_written_as_a_pickle_with_a_payload_are_refused_and_never_unpickled(tamper, tmp_path):
    import pickle

    target = proof("pickled-weights")
    folder = tamper(weights=pickle.dumps({"emb.weight": _Payload(str(target))}))
    with pytest.raises(BadArtifact, match="not a safetensors file"):
        artifact.load(folder)
    assert not target.exists()


def test_a_torch_export_archive_in_place_of_the_program_is_refused_and_never_loaded(tmp_path):
    """torch.export.save writes a zip with pickled sample inputs; evo reads program.json as JSON only."""
    program = export(Tiny(), 256)
    archive = tmp_path / "archive.pt2"
    torch.export.save(program, str(archive))
    folder = save(Tiny(), tmp_path / "artifact")
    (folder / artifact.PROGRAM_FILE).write_bytes(archive.read_bytes())
    with pytest.raises(BadArtifact, match="is not JSON"):
        artifact.load(folder)


def test_a_genome_that_saves_a_pt2_archive_itself_gets_nothing_scored(small_dataset, tmp_path):
    """An archive the genome writes with torch.export.save (sample inputs pickled) is not an artifact the
    harness reads: the slot fails no_submit and nothing of the archive is deserialized."""
    from gpt.runner import SlotJob, run_slot

    genome = tmp_path / "pt2.py"
    genome.write_text(
        "import torch\nfrom gpt import lab\nrun = lab.connect()\n"
        "m = torch.nn.Embedding(run.vocab_size, run.vocab_size)\n"
        "b = torch.export.Dim('b', min=1, max=64); s = torch.export.Dim('s', min=1, max=run.eval_seq_len)\n"
        "p = torch.export.export(m, (torch.zeros(2, 8, dtype=torch.long),), dynamic_shapes=({0: b, 1: s},))\n"
        "torch.export.save(p, 'model.pt2')\n")
    result = run_slot(SlotJob(genome=str(genome), dataset=str(small_dataset.path), out_dir=str(tmp_path / "slot"),
                              budget_s=2.0, grace_s=30.0, eval_tokens=1024, threads=1, static_checks=False))
    assert (result.status, result.reason) == ("failed", "no_submit"), result


class UncheckedView(nn.Module):
    """A view made by aten._reshape_alias, whose sizes and strides are never checked against the storage
    (a red-team graph read the scorer's heap through it, 2026-12-04)."""

    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Embedding(256, 8), nn.Linear(8, 256)

    def forward(self, idx):
        y = self.head(self.embed(idx))
        return torch.ops.aten._reshape_alias.default(y, list(y.shape), list(y.stride()))


def test_a_graph_with_an_unchecked_view_op_is_refused(tmp_path):
    program = torch.export.export(UncheckedView(), (torch.zeros(2, 16, dtype=torch.long),))
    assert any("_reshape_alias" in str(n.target) for n in program.graph.nodes)
    artifact.save(program, tmp_path)
    with pytest.raises(BadArtifact, match="_reshape_alias"):
        artifact.load(tmp_path)


class ShortStatistics(nn.Module):
    """Batch norm's kernel called with one running mean for eight channels: the kernel never compares the two
    and reads seven values past the tensor's end (the scorer's memory, found 2026-12-06)."""

    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Embedding(VOCAB, 8), nn.Linear(8, VOCAB)
        self.register_buffer("stats", torch.zeros(1))

    def forward(self, idx):
        x = self.embed(idx).transpose(1, 2)  # (batch, 8 channels, seq)
        x = torch.ops.aten._native_batch_norm_legit_no_training.default(x, None, None, self.stats, self.stats + 1,
                                                                        0.1, 1e-5)[0]
        return self.head(x.transpose(1, 2))


def test_a_kernel_that_trusts_its_per_channel_shapes_is_checked_when_it_runs(tmp_path):
    """The op is allowed (torch.export writes it for every BatchNorm in eval mode), so the check is at run time, on
    the real tensors: the short running mean is refused before the kernel reads past it, an honest one runs."""
    folder = save(ShortStatistics(), tmp_path / "short", max_seq=64)
    refused = load_and_run(folder)
    assert refused is not None and isinstance(refused[2], RuntimeError), refused
    assert "running_mean has shape (1,), the input has 8 channels" in str(refused[2])

    honest = nn.Sequential(nn.Embedding(VOCAB, 8), Transpose(), nn.BatchNorm1d(8), Transpose(), nn.Linear(8, VOCAB))
    honest.eval()
    program, module, out = load_and_run(save(honest, tmp_path / "honest", max_seq=64))
    assert any("checked__native_batch_norm_legit_no_training" in str(n.target) for n in module.graph.nodes)
    with torch.no_grad():
        torch.testing.assert_close(out, honest(tokens()))


class Transpose(nn.Module):
    def forward(self, x):
        return x.transpose(1, 2)
