"""A genome: one whole training script, its content id, and where it came from.

The id is a hash of a normalization evo owns (`normalized_source`): the syntax tree written
out by evo itself, not by `ast.dump`, whose text changes between Python versions (3.13 drops
empty fields, 3.12 added `type_params`). It is computed once when a genome is made, stored
in the journal, and trusted on read, so a run resumed under another interpreter still
recognizes its own genomes.
"""
from __future__ import annotations

import ast
import difflib
import hashlib
import time
from dataclasses import dataclass, field

NORMALIZATION = "evo-ast-1"  # bump when `normalized_source` changes: ids made before stay as stored


def _write_node(node, out: list[str]) -> None:
    """Node type, then its non-empty fields by name: fields a newer Python adds empty (type_params)
    or leaves out (None, []) write nothing, so the text is the same on every supported version."""
    if isinstance(node, ast.AST):
        out.append(type(node).__name__ + "(")
        for name in sorted(node._fields):
            value = getattr(node, name, None)
            if value is None or value == []:
                continue
            if isinstance(node, ast.Constant) and name == "kind":
                continue  # the u'' prefix: same program
            out.append(name + "=")
            _write_node(value, out)
            out.append(",")
        out.append(")")
    elif isinstance(node, list):
        out.append("[")
        for item in node:
            _write_node(item, out)
            out.append(",")
        out.append("]")
    else:  # a constant: its type and value (True and 1 differ)
        out.append(f"{type(node).__name__}:{node!r}")


def normalized_source(source: str) -> str:
    """The script with formatting and comments normalized away, so that re-formatting or
    re-commenting a script does not make a new genome. A script that does not parse is
    compared by its lines (trailing spaces dropped)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return "\n".join(line.rstrip() for line in source.strip().splitlines())
    out: list[str] = [NORMALIZATION, ":"]
    _write_node(tree, out)
    return "".join(out)


def genome_id(source: str) -> str:
    """Content id: identical programs share an id and are evaluated once."""
    return hashlib.sha256(normalized_source(source).encode("utf-8")).hexdigest()[:12]


def diff_text(a: str, b: str, a_name: str = "parent", b_name: str = "child", context: int = 3) -> str:
    """Unified diff between two scripts (`evo show`, TensorBoard, the export's lineage)."""
    return "".join(difflib.unified_diff(a.splitlines(True), b.splitlines(True), a_name, b_name, n=context))


@dataclass(frozen=True)
class Genome:
    """Source text plus provenance. Frozen: a genome never changes, children are new genomes.
    `id` is computed from the source when not given (a genome read back from the journal
    carries its stored id)."""

    source: str
    parents: tuple[str, ...] = ()
    operator: str = "seed"
    rationale: str = ""
    created: float = field(default_factory=time.time)
    id: str = ""

    def __post_init__(self):
        if not self.id:
            object.__setattr__(self, "id", genome_id(self.source))

    @property
    def length(self) -> int:
        """Code size used by the simplicity tie-break: non-blank, non-comment lines."""
        return sum(1 for line in self.source.splitlines() if line.strip() and not line.strip().startswith("#"))


@dataclass(frozen=True)
class ParentInfo:
    """What an operator may know about a parent: its source and public metrics only.

    Held-out values, Thresholdout answers and probe internals are deliberately absent,
    so no operator (and no prompt) can ever see them.
    """

    genome: Genome
    mean_val_bpb: float | None = None
    n_evals: int = 0
    noise_floor: float | None = None
    train_seconds: float | None = None
    steps: int | None = None
    params: int | None = None  # as the script printed it
    train_loss: float | None = None  # as the script printed it
    last_child_failure: tuple[str, str] | None = None  # (reason, stderr tail) of its latest failed child


@dataclass(frozen=True)
class SlotFacts:
    """The regime a child will be trained in, so a model need not guess it: the slot's budget and
    hardware and the training corpus (train split facts only; never a path, a secret or an eval split)."""

    budget_s: float
    device: str = "cpu"
    threads: int = 0
    slots: int = 1
    corpus: str = ""  # the source's kind: builtin, text, parquet, hf, ...
    tokenizer: str = ""
    vocab_size: int | None = None
    train_tokens: int | None = None
    train_documents: int | None = None

    def describe(self) -> str:
        hardware = self.device + (f", {self.threads} CPU threads" if self.threads else "")
        lines = [f"training budget per slot: {self.budget_s:g} s of wall clock on {hardware} "
                 f"({self.slots} slot{'s' if self.slots != 1 else ''} in parallel)"]
        if self.corpus:
            corpus = f"corpus: {self.corpus}"
            if self.tokenizer:
                corpus += f", tokenizer {self.tokenizer}" + (f" (vocabulary {self.vocab_size})" if self.vocab_size else "")
            if self.train_tokens:
                corpus += f", {self.train_tokens:,} train tokens"
            if self.train_documents:
                corpus += f" in {self.train_documents:,} documents"
            lines.append(corpus)
        return "\n".join(lines)


@dataclass(frozen=True)
class OperatorContext:
    """What an operator may know about the run when it makes one child: a snapshot built by the
    breeder from the run state (public facts only). History rows are dicts with the keys child,
    operator, idea, delta_val_bpb (against the child's parent's mean), n_evals, status. `study` is the
    knob study (evo.operators.studies.Study) of the first parent's structure."""

    noise_floor: float | None = None
    history: tuple[dict, ...] = ()
    memory: str | None = None
    slot: SlotFacts | None = None
    study: object | None = None

    def recent_history(self, n: int) -> list[dict]:
        return list(self.history[-n:]) if n > 0 else []


class OperatorFailure(Exception):
    """An operator could not make a child (the reason is journaled; the slot gets another child)."""
