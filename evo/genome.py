"""A genome: one whole training script plus where it came from."""
from __future__ import annotations

import ast
import difflib
import hashlib
import time
from dataclasses import dataclass, field


def normalized_source(source: str) -> str:
    """The script with formatting and comments normalized away (its AST), so that
    re-formatting or re-commenting a script does not make a new genome."""
    try:
        return ast.dump(ast.parse(source), include_attributes=False)
    except SyntaxError:
        return "\n".join(line.rstrip() for line in source.strip().splitlines())


def diff_text(a: str, b: str, a_name: str = "parent", b_name: str = "child") -> str:
    """Unified diff between two scripts (shown by `evo show`, TensorBoard and lineage)."""
    return "".join(difflib.unified_diff(a.splitlines(True), b.splitlines(True), a_name, b_name))


def genome_id(source: str) -> str:
    """Content id: identical programs share an id and are evaluated once."""
    return hashlib.sha256(normalized_source(source).encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class Genome:
    """Source text plus provenance. Frozen: a genome never changes, children are new genomes."""

    source: str
    parents: tuple[str, ...] = ()
    operator: str = "seed"
    rationale: str = ""
    created: float = field(default_factory=time.time)

    @property
    def id(self) -> str:
        return genome_id(self.source)

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
    last_child_failure: tuple[str, str] | None = None  # (reason, stderr tail) of its latest failed child


class OperatorFailure(Exception):
    """An operator could not make a child (the reason is journaled; the slot gets another child)."""
