"""The typed knob space of a genome, and its structure.

Every knob that can move becomes a `Dimension`, typed from its value and its `# evo:` annotation:

    annotation          kind      searched over
    choice(a, b, ...)   choice    the listed values
    range(lo, hi)       float     [lo, hi], linear (an int knob: the integers in [lo, hi])
    log(lo, hi)         log       [lo, hi], log scale (an int knob: rounded)
    pow2(lo, hi)        pow2      the powers of two in [lo, hi]
    (none) bool         choice    False, True
    (none) float > 0    log       [v / 10, v * 10]: a hundredfold range around the seed's value v
    (none) int 2^k >= 2 pow2      [v / 4, v * 4]
    (none) int >= 1     int       [max(1, v // 2), 2 v]

Zero or negative numbers, strings and tuples without an annotation are fixed: annotate them to
search them. Genomes that differ only in the values of these dimensions share a *structure*:
`structure_id` hashes the source with those values blanked, so a knob study (TPE, CMA-ES) pools
exactly the trials that differ in nothing it does not model.

Each dimension also maps to the unit interval (`to_unit` / `from_unit`), the embedding CMA-ES
searches and the distance used to keep proposals away from configurations that failed.
"""
from __future__ import annotations

import ast
import hashlib
import math
import re
from dataclasses import dataclass

from evo.operators import knobs as kn

SIG_DIGITS = kn.SIG_DIGITS
UNANNOTATED_LOG_SPAN = 10.0  # an unannotated positive float searches [v / 10, v * 10]


@dataclass(frozen=True)
class Dimension:
    """One searchable knob. kind: "float", "log", "int", "pow2" or "choice"; for choice, `choices`."""

    name: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple = ()
    integer: bool = False  # a "float"/"log" knob whose values are ints

    # ---------------------------------------------------------------- the unit embedding
    def to_unit(self, value) -> float:
        """Where a value lies in [0, 1] (values outside the bounds are clamped)."""
        if self.kind == "choice":
            index = self.choices.index(value) if value in self.choices else 0
            return (index + 0.5) / len(self.choices)
        lo, hi, v = self._scaled(self.low), self._scaled(self.high), self._scaled(value)
        if self.kind in ("int", "pow2"):
            lo, hi = lo - 0.5, hi + 0.5
        return 0.5 if hi <= lo else min(max((v - lo) / (hi - lo), 0.0), 1.0)

    def from_unit(self, u: float):
        """The value at u in [0, 1] (clamped), rounded to what the knob can hold."""
        u = min(max(float(u), 0.0), 1.0)
        if self.kind == "choice":
            return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]
        lo, hi = self._scaled(self.low), self._scaled(self.high)
        if self.kind in ("int", "pow2"):
            lo, hi = lo - 0.5, hi + 0.5
        return self.clip(self._unscaled(lo + u * (hi - lo)))

    def _scaled(self, value) -> float:
        if self.kind == "log":
            return math.log(max(float(value), 1e-300))
        if self.kind == "pow2":
            return math.log2(max(float(value), 1e-300))
        return float(value)

    def _unscaled(self, x: float):
        return math.exp(x) if self.kind == "log" else 2.0 ** x if self.kind == "pow2" else x

    def clip(self, value):
        """A value inside the bounds, of the knob's type (ints rounded, powers of two snapped, floats
        rounded to SIG_DIGITS significant digits so the script stays readable)."""
        if self.kind == "choice":
            return value if value in self.choices else self.choices[0]
        if self.kind == "pow2":
            exponent = min(max(round(math.log2(max(float(value), 1.0))), round(math.log2(self.low))),
                           round(math.log2(self.high)))
            return 2 ** exponent
        if self.kind == "int" or self.integer:
            return int(min(max(round(float(value)), math.ceil(self.low)), math.floor(self.high)))
        rounded = float(f"{float(value):.{SIG_DIGITS}g}")
        return min(max(rounded, float(self.low)), float(self.high))

    # ---------------------------------------------------------------- Optuna's view
    def distribution(self):
        """The Optuna distribution: pow2 as its exponent, choices by index (Optuna stores only scalars)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(tuple(range(len(self.choices))))
        if self.kind == "pow2":
            return IntDistribution(round(math.log2(self.low)), round(math.log2(self.high)))
        if self.kind == "int":
            return IntDistribution(math.ceil(self.low), math.floor(self.high))
        return FloatDistribution(float(self.low), float(self.high), log=self.kind == "log")

    def to_param(self, value):
        if self.kind == "choice":
            return self.choices.index(value) if value in self.choices else 0
        if self.kind == "pow2":
            return round(math.log2(self.clip(value)))
        if self.kind == "int":
            return self.clip(value)
        return min(max(float(value), float(self.low)), float(self.high))

    def from_param(self, param):
        if self.kind == "choice":
            return self.choices[int(param)]
        if self.kind == "pow2":
            return 2 ** int(param)
        return self.clip(param)

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.name}: one of {', '.join(map(repr, self.choices))}"
        scale = {"log": "log scale", "pow2": "powers of two", "int": "integers", "float": "linear"}[self.kind]
        return f"{self.name}: {self.low:g} .. {self.high:g} ({scale})"


def _finite(*values) -> bool:
    """Plain finite numbers that float arithmetic can hold (no bools, no 400-digit ints)."""
    try:
        return all(not isinstance(v, bool) and math.isfinite(v) and abs(v) < 1e300 for v in values)
    except (OverflowError, TypeError):
        return False


def _dimension(knob: kn.Knob) -> Dimension | None:
    """The dimension a knob spans, or None when it is fixed (see the module docstring). Values or
    bounds a float cannot hold (inf, 1e308 * 10, a 400-digit int) leave the knob fixed."""
    a, v = knob.annotation, knob.value
    if a is not None and a.form == "choice":
        return Dimension(knob.name, "choice", choices=tuple(a.values)) if len(a.values) > 1 else None
    if knob.kind == "bool":
        return Dimension(knob.name, "choice", choices=(False, True))
    if knob.kind not in ("int", "float") or not _finite(v):
        return None
    if a is not None:
        lo, hi = a.values
        if lo >= hi or not _finite(lo, hi) or (knob.kind == "int" and math.ceil(lo) >= math.floor(hi)):
            return None
        if a.form == "pow2":
            return Dimension(knob.name, "pow2", lo, hi)
        if a.form == "log":
            return Dimension(knob.name, "log", lo, hi, integer=knob.kind == "int")
        return Dimension(knob.name, "int" if knob.kind == "int" else "float", lo, hi)
    if knob.kind == "float":
        lo, hi = v / UNANNOTATED_LOG_SPAN, v * UNANNOTATED_LOG_SPAN
        return Dimension(knob.name, "log", lo, hi) if v > 0 and lo > 1e-300 and _finite(hi) else None
    if v >= 2 and v & (v - 1) == 0:
        return Dimension(knob.name, "pow2", max(1, v // 4), v * 4)
    return Dimension(knob.name, "int", max(1, v // 2), 2 * v) if v >= 1 else None


@dataclass(frozen=True)
class KnobSpace:
    """The dimensions of one genome's knobs (the last assignment of each name: it takes effect)."""

    dimensions: tuple[Dimension, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dimensions)

    def distributions(self) -> dict:
        return {d.name: d.distribution() for d in self.dimensions}

    def to_params(self, values: dict) -> dict:
        return {d.name: d.to_param(values[d.name]) for d in self.dimensions}

    def from_params(self, params: dict) -> dict:
        return {d.name: d.from_param(params[d.name]) for d in self.dimensions}

    def to_unit(self, values: dict) -> list[float]:
        return [d.to_unit(values[d.name]) for d in self.dimensions]

    def from_unit(self, point) -> dict:
        return {d.name: d.from_unit(u) for d, u in zip(self.dimensions, point)}

    def distance(self, a: dict, b: dict) -> float:
        """The largest per-dimension gap between two configurations in the unit embedding (L-inf)."""
        return max((abs(x - y) for x, y in zip(self.to_unit(a), self.to_unit(b))), default=0.0)

    def check(self, values: dict) -> dict:
        """Values for every dimension, clipped to the space; unknown names are a ValueError (an LLM's
        knob proposal goes through here)."""
        unknown = sorted(str(n) for n in set(values) - set(self.names))
        if unknown:
            raise ValueError(f"not knobs of this genome: {', '.join(unknown)} (knobs: {', '.join(self.names)})")
        return {d.name: _checked(d, values[d.name]) for d in self.dimensions if d.name in values}


def _checked(d: Dimension, value):
    """A proposed value, of the dimension's own type, clipped into it; ValueError names what is wrong."""
    if d.kind == "choice":
        match = next((c for c in d.choices if c == value and type(c) is type(value)), None)
        if match is None:
            raise ValueError(f"{d.name} = {value!r} is not one of {', '.join(map(repr, d.choices))}")
        return match
    if not _finite(value):
        raise ValueError(f"{d.name} = {value!r} is not a finite number")
    return d.clip(value)


def knob_space(source: str) -> tuple[KnobSpace, dict]:
    """(the space, the genome's own values). Raises OperatorFailure when the source does not parse."""
    found = {k.name: k for k in kn.find_knobs(source)}  # per name the last assignment
    dims = tuple(d for d in (_dimension(k) for k in found.values()) if d is not None)
    return KnobSpace(dims), {d.name: found[d.name].value for d in dims}


CODING = re.compile(r"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)", re.M)


def structure_id(source: str) -> str:
    """The genome's syntax tree with the value of each searchable knob's assignment (the one that
    takes effect) replaced by a marker of the value's type, hashed with any coding declaration:
    genomes that differ only in those values (or in comments and formatting) share it, and nothing
    else does. (The marker is the Python type, not the dimension's kind: an unannotated int's kind
    follows its value, 4 is a power of two and 3 is not.)"""
    space, values = knob_space(source)
    kinds = {name: type(value).__name__ for name, value in values.items()}
    sites = {(k.line, k.name) for k in {k.name: k for k in kn.find_knobs(source)}.values() if k.name in kinds}
    tree = ast.parse(source)
    for stmt in tree.body:
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            target = stmt.targets[0] if isinstance(stmt, ast.Assign) else stmt.target
            if isinstance(target, ast.Name) and (stmt.lineno, target.id) in sites:
                stmt.value = ast.Constant(value=f"<evo knob: {kinds[target.id]}>")
    coding = CODING.findall("\n".join(source.split("\n", 2)[:2]))
    return hashlib.sha256((repr(coding) + ast.dump(tree)).encode()).hexdigest()[:12]


def write_values(source: str, values: dict) -> tuple[str, list[tuple]]:
    """The source with these knob values written in (each knob's last assignment, in its own style),
    and the (name, old, new) changes. Raises OperatorFailure when nothing changes."""
    parsed = kn._parse(source)
    found = {k.name: k for k in kn._knobs(parsed)}
    texts, changes = {}, []
    for name, new in values.items():
        knob = found[name]
        if new == knob.value and type(new) is type(knob.value):
            continue
        text = kn._literal(new, knob.text)
        texts[(knob.line, knob.name)] = text
        changes.append((name, knob.value, new))
    if not changes:
        raise kn.OperatorFailure("the proposed knob values equal the parent's")
    return kn._rewrite(parsed, texts), changes
