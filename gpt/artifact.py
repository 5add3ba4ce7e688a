"""The artifact a genome hands to the harness is data: a graph as JSON and weights as safetensors.

    work/program.json         the exported program (torch.export's JSON schema), no pickles
    work/weights.safetensors  every parameter, buffer and tensor constant, by name

`save()` runs inside the genome's process (untrusted: a genome may write anything there).
`load()` runs in the scorer and treats both files as hostile input. torch.export's own
archive (`torch.export.save/load`, `.pt2`) is never used: loading one executes archive
content by several routes (pickled sample inputs with a `weights_only=False` fallback,
pickled weights and constants, `guards_code` strings exec'd on every forward). Here:

- weights are read by the safetensors parser (a JSON header and raw bytes, nothing runs);
- the program is parsed with `json` and checked against an allow-list *before* torch's
  deserializer sees it, closing the routes by which that deserializer runs strings:
  `sympy.sympify` of symbolic expressions (it evals), operator names resolved by getattr
  chains from `torch` (which reach `torch.load`, `torch.ops.load_library`, ...), node names
  pasted into the generated Python of the graph module, `guards_code`, pytree specs,
  higher-order ops carrying subgraphs, and torchbind objects;
- what is left is a graph of ATen ops on tensors, which the harness runs itself.

Anything else is `BadArtifact`, which the slot reports as `failed: bad_artifact` with a
message that says what the genome must change. docs/integrity.md lists the routes.
"""
from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from gpt.allowed_ops import checked, is_allowed
from gpt.sym_exprs import SYMBOL, BadExpression, check_sym_expr

PROGRAM_FILE = "program.json"
WEIGHTS_FILE = "weights.safetensors"
FILES = (PROGRAM_FILE, WEIGHTS_FILE)
MAX_PROGRAM_BYTES = 64 * 2**20
MAX_NODES = 200_000

TOP_KEYS = {"graph_module", "opset_version", "range_constraints", "schema_version", "verifiers", "torch_version",
            "guards_code"}
ALLOWED_VERIFIERS = {"TRAINING", "ATEN"}
# Argument kinds that are plain data. Rejected: as_graph (subgraphs of higher-order ops), as_operator
# (a callable named by a string), as_custom_obj (torchbind objects, pickled), as_string_to_argument.
DATA_ARGUMENTS = {"as_none", "as_tensor", "as_tensors", "as_int", "as_ints", "as_float", "as_floats", "as_string",
                  "as_strings", "as_sym_int", "as_sym_ints", "as_scalar_type", "as_memory_format", "as_layout",
                  "as_device", "as_bool", "as_bools", "as_sym_bool", "as_sym_bools", "as_optional_tensors",
                  "as_sym_float", "as_sym_floats", "as_optional_tensor", "as_complex", "as_int_lists",
                  "as_float_lists"}
INPUT_KINDS = {"user_input", "parameter", "buffer", "tensor_constant"}
OUTPUT_KINDS = {"user_output"}  # no buffer or input mutations, no gradients, no tokens
# string arguments are allowed only where an ATen op takes a mode name; `aten::from_file(str filename)`
# reads a file and `aten::_print(str)` writes to stdout, so any other string argument is refused
STRING_ARGUMENTS = {("gelu", "approximate"), ("div", "rounding_mode"),
                    ("einsum", "equation"), ("pad", "mode"), ("_assert_scalar", "assert_msg"),
                    ("_assert_async", "assert_msg"), ("_assert_tensor_metadata", "dtype"),
                    ("linalg_vector_norm", "ord"), ("upsample_nearest1d", "mode")}
# ops that hand out uninitialized memory (which still holds what earlier calls left there) are not refused here;
# the scorer fills new memory instead (torch.utils.deterministic.fill_uninitialized_memory), see gpt.score
OPERATOR_TARGETS = {f"_operator.{n}" for n in ("getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg",
                                               "pow", "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "not_")}
SYM_TARGETS = {f"torch.sym_{n}" for n in ("float", "int", "max", "min", "not", "sqrt", "ite")}
ATEN_TARGET = re.compile(r"torch\.ops\.aten\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
FQN = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
# the pytree specs of forward(idx) -> logits, as torch.export writes them
CANONICAL_IN_SPEC = ('[1, {"type": "builtins.tuple", "context": "null", "children_spec": [{"type": "builtins.tuple", '
                     '"context": "null", "children_spec": [{"type": null, "context": null, "children_spec": []}]}, '
                     '{"type": "builtins.dict", "context": "[]", "children_spec": []}]}]')
CANONICAL_OUT_SPEC = '[1, {"type": null, "context": null, "children_spec": []}]'
FIX = ("submit the model with run.submit(model): forward(idx) takes one LongTensor and returns one logits tensor, "
       "built from ordinary torch operations (no custom ops, no torch.cond/map or other higher-order ops, no "
       "script objects, no buffers or inputs changed in place)")


class BadArtifact(Exception):
    """The artifact is not a program the harness accepts; the message says what to change."""


# ---------------------------------------------------------------- writing (inside the genome's process)


def save(program, folder: str | os.PathLike) -> None:
    """Write an ExportedProgram as program.json + weights.safetensors (no pickles anywhere)."""
    import torch
    from safetensors.torch import save_file
    from torch._export.serde.serialize import serialize

    tensors = {}
    for name, value in list(program.state_dict.items()) + list(program.constants.items()):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"the model holds a non-tensor constant {name!r} ({type(value).__name__}); {FIX}")
        tensors[name] = value.detach().to("cpu").contiguous()
    serialized = serialize(program, serialize_state_dict=False, serialize_constants=False,
                           serialize_example_inputs=False)
    folder = Path(folder)
    save_file(_unshared(tensors), str(folder / WEIGHTS_FILE))
    (folder / PROGRAM_FILE).write_bytes(serialized.exported_program)


def _unshared(tensors: dict) -> dict:
    """safetensors refuses tensors that share memory (tied weights): store each name's own copy."""
    seen, out = set(), {}
    for name, t in tensors.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        out[name] = t.clone() if key in seen else t
        if key is not None:
            seen.add(key)
    return out


# ---------------------------------------------------------------- checking (trusted side)


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of a plain file with one link, opened without following symlinks; at most `limit`."""
    with open_regular(path, limit) as f:
        return f.read()


def open_regular(path: Path, limit: int):
    """Open a plain file with one link without following symlinks; refuse one over `limit` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise BadArtifact(f"{path.name} is missing; {FIX}") from None
    except OSError as exc:
        raise BadArtifact(f"{path.name} cannot be opened as a plain file ({exc.strerror}); {FIX}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise BadArtifact(f"{path.name} is not a plain file the genome wrote itself (a directory, link or device)")
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise BadArtifact(f"{path.name} is not a plain file the genome wrote itself (a link or a device)")
        if st.st_size > limit:
            raise BadArtifact(f"{path.name} is {st.st_size} bytes, over the limit of {limit}")
        return os.fdopen(os.dup(f.fileno()), "rb")


def check_program(doc) -> dict:
    """Validate the JSON of an exported program; return a copy safe for torch's deserializer.

    Metadata (stack traces, module paths, source functions) is dropped, `guards_code` emptied
    and the module call graph reduced to the canonical forward(idx) -> logits signature."""
    if not isinstance(doc, dict) or set(doc) - TOP_KEYS or "graph_module" not in doc:
        raise BadArtifact(f"{PROGRAM_FILE} is not an exported program (top-level keys "
                          f"{sorted(doc) if isinstance(doc, dict) else type(doc).__name__}); {FIX}")
    gm = _dict(doc["graph_module"], "graph_module")
    graph = _dict(gm.get("graph"), "graph_module.graph")
    if gm.get("treespec_namedtuple_fields"):
        raise BadArtifact(f"the program's inputs or outputs are namedtuples; {FIX}")
    nodes = graph.get("nodes")
    if not isinstance(nodes, list) or len(nodes) > MAX_NODES:
        raise BadArtifact(f"the graph has no node list or more than {MAX_NODES} nodes")
    for node in nodes:
        _check_node(_dict(node, "a graph node"))
        node["metadata"] = {}
    if graph.get("custom_obj_values"):
        raise BadArtifact(f"the graph holds script objects; {FIX}")
    _check_signature(_dict(gm.get("signature"), "signature"))
    _check_strings(doc)
    verifiers = doc.get("verifiers") or []
    if not isinstance(verifiers, list) or set(verifiers) - ALLOWED_VERIFIERS:
        raise BadArtifact(f"unknown verifier dialect {verifiers!r}")
    for key in _dict(doc.get("range_constraints", {}), "range_constraints"):
        if not SYMBOL.fullmatch(key):
            raise BadArtifact(f"range constraint on {key!r}: not a symbol name")
    gm["metadata"] = {}
    gm["module_call_graph"] = _canonical_call_graph(gm.get("module_call_graph"))
    doc["guards_code"] = []  # guards are Python source torch would exec on every call: never taken from a genome
    return doc


def _dict(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise BadArtifact(f"{what} is not a JSON object in {PROGRAM_FILE}; {FIX}")
    return value


def _check_node(node: dict) -> None:
    if node.get("name") is not None and not (isinstance(node["name"], str) and _plain_name(node["name"])):
        raise BadArtifact(f"the node name {str(node['name'])[:100]!r} is not a plain identifier")
    target = node.get("target")
    if not isinstance(target, str):
        raise BadArtifact("a graph node has no target")
    op = ATEN_TARGET.fullmatch(target)
    if op is None and target not in OPERATOR_TARGETS and target not in SYM_TARGETS:
        raise BadArtifact(f"the graph calls {target[:200]!r}, which is not an ATen operator; {FIX}")
    schema = _aten_schema(op.group(1), op.group(2), target) if op else None
    for named in node.get("inputs") or []:
        arg = _dict(named, "a node input").get("arg")
        kind = _argument_kind(arg, target)
        if kind in ("as_string", "as_strings"):
            name = named.get("name")
            if op is None or (op.group(1), name) not in STRING_ARGUMENTS or schema is None:
                raise BadArtifact(f"{target} is called with a string argument {name!r}; {FIX}")
    for arg in node.get("outputs") or []:
        _argument_kind(arg, target)


def _aten_schema(name: str, overload: str, target: str):
    """The op's schema, resolved only by attribute names that passed the identifier pattern."""
    import torch

    if not is_allowed(name):
        raise BadArtifact(f"the graph calls {target}, which is not one of the operators the scorer runs "
                          f"(gpt/allowed_ops.py: ordinary tensor arithmetic, reductions, views, indexing and nn "
                          f"layers; nothing unsafe, sparse, nested, quantized or strided by hand); {FIX}")
    try:
        packet = getattr(torch.ops.aten, name)
        return getattr(packet, overload)._schema
    except (AttributeError, RuntimeError):
        raise BadArtifact(f"the graph calls {target}, which this torch does not have") from None


SCALAR_TYPES = {"as_int": (int,), "as_float": (int, float), "as_bool": (bool,), "as_string": (str,),
                "as_none": (bool,), "as_scalar_type": (int,), "as_memory_format": (int,), "as_layout": (int,)}
NON_FINITE = ("Infinity", "-Infinity", "NaN")
LIST_TYPES = {"as_ints": (int,), "as_floats": (int, float), "as_bools": (bool,), "as_strings": (str,)}


def _argument_kind(arg, target: str) -> str:
    if not isinstance(arg, dict) or len(arg) != 1:
        raise BadArtifact(f"an argument of {target} is malformed")
    ((kind, value),) = arg.items()
    if kind not in DATA_ARGUMENTS:
        raise BadArtifact(f"{target} takes a {kind} argument (subgraphs, operators and script objects are "
                          f"not accepted); {FIX}")
    def fits(v, want) -> bool:
        if (int in want or float in want) and v in NON_FINITE and kind in ("as_float", "as_floats"):
            return True  # torch writes inf and nan as these strings (an honest -inf attention mask)
        return isinstance(v, want) and (bool in want or not isinstance(v, bool))

    ok = True
    if kind in SCALAR_TYPES:  # torch's reader does not check JSON types: a string could ride in an as_int
        ok = fits(value, SCALAR_TYPES[kind])
    elif kind in LIST_TYPES:
        ok = isinstance(value, list) and all(fits(v, LIST_TYPES[kind]) for v in value)
    if not ok:
        raise BadArtifact(f"an argument of {target} is a {kind} holding {type(value).__name__}")
    return kind


def _check_signature(sig: dict) -> None:
    for spec in sig.get("input_specs") or []:
        kind = next(iter(_dict(spec, "an input spec")), None)
        if kind not in INPUT_KINDS:
            raise BadArtifact(f"the program takes a {kind} input; {FIX}")
        for key in ("parameter_name", "buffer_name", "tensor_constant_name"):
            name = _dict(spec[kind], "an input spec").get(key)
            if name is not None and not (isinstance(name, str) and FQN.fullmatch(name)
                                         and all(_attribute_name(part) or part.isdigit() for part in name.split("."))):
                raise BadArtifact(f"{key} {str(name)[:100]!r} is not a dotted name of plain identifiers")
    user_inputs = [s for s in sig.get("input_specs") or [] if "user_input" in s]
    if len(user_inputs) != 1 or "as_tensor" not in user_inputs[0]["user_input"].get("arg", {}):
        raise BadArtifact(f"the program takes {len(user_inputs)} inputs; {FIX}")
    outputs = sig.get("output_specs") or []
    for spec in outputs:
        kind = next(iter(_dict(spec, "an output spec")), None)
        if kind not in OUTPUT_KINDS:
            raise BadArtifact(f"the program has a {kind} output (it changes state while it is scored); {FIX}")
    if len(outputs) != 1:
        raise BadArtifact(f"the program returns {len(outputs)} outputs; {FIX}")


def _check_strings(value, key: str = "") -> None:
    """Every name is an identifier and every symbolic expression uses arithmetic on symbols only.

    Names become Python identifiers in the code torch generates for the graph; expressions
    are parsed by sympy.sympify, which evals its input."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "expr_str":
                try:
                    check_sym_expr(v)
                except BadExpression as exc:
                    raise BadArtifact(str(exc)) from None
            elif k in ("name", "as_name") and isinstance(v, str) and not IDENTIFIER.fullmatch(v):
                raise BadArtifact(f"the name {v[:100]!r} in {PROGRAM_FILE} is not an identifier")
            elif k in ("tensor_values", "sym_int_values", "sym_bool_values", "sym_float_values"):
                for name in _dict(v, k):
                    if not _plain_name(name):
                        raise BadArtifact(f"the value name {name[:100]!r} is not an identifier")
                _check_strings(v, k)
            elif k not in ("metadata",):
                _check_strings(v, k)
    elif isinstance(value, list):
        for v in value:
            _check_strings(v, key)


def _plain_name(name: str) -> bool:
    """An identifier that is safe as a local in generated Python: no keyword, not `self`."""
    import keyword

    return bool(IDENTIFIER.fullmatch(name)) and not keyword.iskeyword(name) and name not in ("self", "None")


def _attribute_name(name: str) -> bool:
    """A plain name that can also be set on the graph module without shadowing one of its own attributes."""
    import torch

    return _plain_name(name) and not hasattr(torch.fx.GraphModule, name)


def _canonical_call_graph(entries) -> list:
    """The root entry only, with the one signature the harness calls: forward(idx) -> logits."""
    root = [e for e in entries or [] if isinstance(e, dict) and e.get("fqn") == ""]
    sig = root[0].get("signature") if root else None
    if not isinstance(sig, dict) or sig.get("in_spec") != CANONICAL_IN_SPEC or sig.get("out_spec") != CANONICAL_OUT_SPEC:
        raise BadArtifact(f"forward() must take exactly one tensor and return exactly one tensor; {FIX}")
    names = sig.get("forward_arg_names")
    if not (isinstance(names, list) and len(names) == 1 and isinstance(names[0], str) and _attribute_name(names[0])):
        raise BadArtifact(f"forward() must take one argument; {FIX}")
    return [{"fqn": "", "signature": {"inputs": [], "outputs": [], "in_spec": CANONICAL_IN_SPEC,
                                      "out_spec": CANONICAL_OUT_SPEC, "forward_arg_names": names}}]


def load(folder: str | os.PathLike, max_weight_bytes: int = 64 * 2**30):
    """Check and load an artifact; returns (program, module). Raises BadArtifact, and only that.

    Nothing in either file is executed: the weights go through the safetensors parser, the
    program through `check_program` before torch's JSON deserializer builds the graph. A graph with
    any op that writes a tensor is then functionalized, so a write to a buffer hidden behind a view or
    an alias shows up as a mutation in the signature, and refused: the scorer only runs pure functions."""
    folder = Path(folder)
    try:
        return _load(folder, max_weight_bytes)
    except BadArtifact:
        raise
    except RecursionError:
        raise BadArtifact(f"{PROGRAM_FILE} is nested too deeply; {FIX}") from None
    except Exception as exc:  # torch's reader and verifier raise many types for malformed input
        raise BadArtifact(f"the program cannot be rebuilt ({type(exc).__name__}: {str(exc)[:300]}); {FIX}") from None


def _load(folder: Path, max_weight_bytes: int):
    from safetensors import safe_open
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass

    try:
        doc = json.loads(read_regular(folder / PROGRAM_FILE, MAX_PROGRAM_BYTES))
    except ValueError as exc:
        raise BadArtifact(f"{PROGRAM_FILE} is not JSON ({str(exc)[:200]}); {FIX}") from None
    doc = check_program(doc)
    try:
        with open_regular(folder / WEIGHTS_FILE, max_weight_bytes) as f:  # memory-mapped through the open fd
            with safe_open(f"/proc/self/fd/{f.fileno()}", framework="pt") as st:
                weights = {name: st.get_tensor(name) for name in st.keys()}
    except BadArtifact:
        raise
    except Exception as exc:
        raise BadArtifact(f"{WEIGHTS_FILE} is not a safetensors file ({str(exc)[:200]}); {FIX}") from None
    state_dict, constants = _split_weights(doc["graph_module"]["signature"], weights)
    serialized = _dict_to_dataclass(schema.ExportedProgram, doc)
    program = ExportedProgramDeserializer().deserialize(serialized, state_dict, constants, None)
    _check_weights_match_graph(program)
    if _writes_tensors(program):  # functionalize (seconds on a CPU): hidden in-place writes become explicit
        program = program.run_decompositions({})
    sig = program.graph_signature
    if sig.buffers_to_mutate or sig.user_inputs_to_mutate or getattr(sig, "parameters_to_mutate", None):
        raise BadArtifact(f"the program changes its buffers, parameters or inputs while it runs; {FIX}")
    _check_graph_calls(program)
    return program, _with_checked_kernels(program.module())


def _with_checked_kernels(module):
    """The module to run, its calls of a kernel that trusts its arguments' shapes (gpt.allowed_ops.checked)
    routed through a check that runs on the real tensors: the shapes program.json declares are the genome's word."""
    import torch

    changed = False
    for node in module.graph.nodes:
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            target = checked(node.target)
            changed |= target is not node.target
            node.target = target
    if changed:
        module.recompile()
    return module


def _check_graph_calls(program) -> None:
    """What runs is what was checked: every call of the rebuilt (and functionalized) graph is an
    allowed ATen operator or one of the shape-arithmetic builtins, whatever torch's reader made of the JSON."""
    import torch

    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        target = node.target
        if isinstance(target, torch._ops.OpOverload):
            namespace, _, name = target._schema.name.partition("::")
            if namespace == "aten" and is_allowed(name):
                continue
        elif f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', '')}" in OPERATOR_TARGETS | SYM_TARGETS:
            continue
        raise BadArtifact(f"the rebuilt graph calls {target}, which is not one of the operators the scorer runs; {FIX}")


# ops that update their running statistics in place in training mode although their schema says no write
SILENT_WRITERS = re.compile(r"batch_norm|instance_norm")


def _writes_tensors(program) -> bool:
    """Whether any op of the graph may write a tensor: an in-place or out= op, as its schema says, or a
    normalization that updates its running statistics without saying so. A graph without one is already
    functional (nothing it runs can write through a view or an alias), so only a graph with one is
    functionalized to show where its writes land."""
    for node in program.graph.nodes:
        schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
        if schema is not None and (schema.is_mutable or SILENT_WRITERS.search(schema.name)):
            return True
    return False


def _check_weights_match_graph(program) -> None:
    """Every weight has the shape and dtype the graph was traced with."""
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    sig = program.graph_signature
    named = {**sig.inputs_to_parameters, **sig.inputs_to_buffers, **sig.inputs_to_lifted_tensor_constants}
    tensors = {**program.state_dict, **program.constants}
    for node_name, weight_name in named.items():
        val = placeholders[node_name].meta.get("val")
        t = tensors.get(weight_name)
        if val is None or t is None or tuple(val.shape) != tuple(t.shape) or val.dtype != t.dtype:
            raise BadArtifact(f"the weight {weight_name!r} is {tuple(t.shape) if t is not None else 'missing'} "
                              f"{getattr(t, 'dtype', '')}, but the graph reads "
                              f"{tuple(val.shape) if val is not None else '?'} {getattr(val, 'dtype', '')}; {FIX}")


def _split_weights(signature: dict, weights: dict) -> tuple[dict, dict]:
    """Parameters and persistent buffers go to the state dict, the rest to constants; all must be there."""
    state_dict, constants = {}, {}
    for spec in signature.get("input_specs") or []:
        kind, body = next(iter(spec.items()))
        body = _dict(body, "an input spec")
        name = body.get("parameter_name") or body.get("buffer_name") or body.get("tensor_constant_name")
        if kind == "user_input":
            continue
        if name not in weights:
            raise BadArtifact(f"{WEIGHTS_FILE} has no tensor {name!r} that the program reads; {FIX}")
        persistent = kind == "parameter" or (kind == "buffer" and body.get("persistent", True))
        tensor = weights[name]
        (state_dict if persistent else constants)[name] = torch_parameter(tensor) if kind == "parameter" else tensor
    return state_dict, constants


def torch_parameter(tensor):
    import torch

    return torch.nn.Parameter(tensor, requires_grad=False)
