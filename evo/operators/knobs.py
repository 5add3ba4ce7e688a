"""Knob operators: cheap, offline edits of a genome's UPPER_CASE constants.

A knob is a module-level `NAME = literal` (a number, bool, str, or tuple of those).
An inline `# evo:` comment constrains it: `choice(v1, v2, ...)`, `range(lo, hi)` (linear),
`log(lo, hi)` (a positive number searched on a log scale) or `pow2(lo, hi)` (powers of two).
The typed search space built from these is `evo.operators.space`.
New values replace only the value expression's text (its span in the ast), so every other byte
of the script survives and a child's diff against its parent is exactly the knobs moved.
"""
from __future__ import annotations

import ast
import functools
from contextlib import contextmanager
import math
import random
import re
from dataclasses import dataclass, field
from decimal import Decimal

from evo.genome import Genome, OperatorContext, OperatorFailure, ParentInfo
from gpt.errors import UserError

KNOB_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
ANNOTATION = re.compile(r"#\s*evo:(.*)$")
ALLOWED_FORMS = ("'# evo: choice(v1, v2, ...)' with literal values, '# evo: range(lo, hi)' with numbers lo <= hi, "
                 "'# evo: log(lo, hi)' with numbers 0 < lo <= hi, or '# evo: pow2(lo, hi)' with powers of two lo <= hi")
BOUNDED_FORMS = ("range", "log", "pow2")
SCALARS = ("bool", "int", "float", "str")
PARSER_LINES = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")
LOG_SIGMA = 0.5  # positive floats move by a factor exp(N(0, 0.5)): mostly x0.6 .. x1.6
SIG_DIGITS = 3  # mutated floats are rounded so the script stays readable
RETRIES = 50


@dataclass(frozen=True)
class Annotation:
    """A parsed `# evo:` comment. form "choice": values are the allowed values; "range", "log" and
    "pow2": values are (lo, hi)."""
    form: str
    values: tuple


@dataclass(frozen=True)
class Knob:
    """One tunable constant. `text` is its source text, kept to write new values in the same style."""
    name: str
    value: object
    kind: str  # "float", "int", "bool", "str" or "tuple"
    annotation: Annotation | None
    line: int
    text: str = ""
    _node: object = field(default=None, compare=False, repr=False)  # the value's ast node (its span)


def _kind(value) -> str | None:
    if isinstance(value, tuple):
        return "tuple" if all(_kind(v) in SCALARS for v in value) else None
    return next((name for type_, name in zip((bool, int, float, str), SCALARS) if isinstance(value, type_)), None)


@dataclass(frozen=True)
class _Parsed:
    """A script read once: its text and, per top-level `NAME = value`, the value's ast node."""
    source: str
    sites: tuple  # (name, value node, first line, comment on the statement's last line, shares its line)
    lines: tuple = ()  # the source's lines, UTF-8 encoded (the ast counts columns in bytes)
    offsets: tuple = ()  # the character offset where each line starts

    def segment(self, node) -> tuple[int, int]:
        """The node's [start, end) character span in the source."""
        def at(lineno: int, byte_col: int) -> int:
            return self.offsets[lineno - 1] + len(self.lines[lineno - 1][:byte_col].decode("utf-8", "surrogatepass"))
        return at(node.lineno, node.col_offset), at(node.end_lineno, node.end_col_offset)


def _parse(source: str) -> _Parsed:
    """The top-level `NAME = value` statements of a script with their trailing comments, from the
    ast (one pass of the standard library's parser; libcst took ~20 ms per genome). A statement's
    comment is what follows it on its last line, when that starts with '#'."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError) as e:
        raise OperatorFailure(f"genome does not parse, so its knobs cannot be read: {e}") from None
    # lines as the parser counts them (\n, \r\n, \r): str.splitlines also breaks at \f, \u2028 ...
    encoded = tuple(line.encode("utf-8", "surrogatepass") for line in PARSER_LINES.findall(source))
    on_line: dict[int, int] = {}  # statements that start or end on each line
    for stmt in tree.body:
        for line in {stmt.lineno, stmt.end_lineno}:
            on_line[line] = on_line.get(line, 0) + 1
    sites = []
    for stmt in tree.body:
        target = (stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                  else stmt.target if isinstance(stmt, ast.AnnAssign) and stmt.value is not None else None)
        if isinstance(target, ast.Name) and KNOB_NAME.match(target.id):
            shared = on_line[stmt.lineno] > 1 or on_line[stmt.end_lineno] > 1
            rest = encoded[stmt.end_lineno - 1][stmt.end_col_offset:].decode("utf-8", "surrogatepass").strip()
            sites.append((target.id, stmt.value, stmt.lineno, rest if rest.startswith("#") else "", shared))
    offsets = [0]
    for line in encoded:
        offsets.append(offsets[-1] + len(line.decode("utf-8", "surrogatepass")))
    return _Parsed(source, tuple(sites), encoded, tuple(offsets))


@functools.lru_cache(maxsize=4096)  # every child of a genome repeats its annotations
def _annotation(comment: str, line: int, name: str, kind: str, shared: bool) -> Annotation | None:
    """Parse `# evo: ...` with ast (never eval); anything malformed is the user's to fix."""
    if not (match := ANNOTATION.search(comment)):
        return None
    body = match.group(1).strip()

    def bad(why: str) -> UserError:
        return UserError(f"line {line} ({name}): bad knob annotation '# evo: {body}': {why}. "
                         f"Allowed forms: {ALLOWED_FORMS}.")
    if shared:
        raise bad("an annotated knob must be the only statement on its line")
    try:
        call = ast.parse(body, mode="eval").body
    except SyntaxError:
        raise bad("it is not valid Python") from None
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.keywords \
            or call.func.id not in ("choice",) + BOUNDED_FORMS:
        raise bad("expected choice(...), range(...), log(...) or pow2(...)")
    try:
        values = tuple(ast.literal_eval(arg) for arg in call.args)
    except ValueError:
        raise bad("arguments must be literal values") from None
    if call.func.id == "choice":
        if not values or any(_kind(v) is None for v in values):
            raise bad("choice needs one or more numbers, bools, strings or tuples")
        return Annotation("choice", values)
    form = call.func.id
    if len(values) != 2 or any(_kind(v) not in ("int", "float") for v in values) or values[0] > values[1]:
        raise bad(f"{form} needs exactly two numbers lo <= hi")
    if kind not in ("int", "float"):
        raise bad(f"{form} only applies to number knobs, this one is {kind}")
    if form == "log" and values[0] <= 0:
        raise bad("log needs a positive lower bound")
    if form == "pow2" and (kind != "int" or not all(isinstance(v, int) and v >= 1 and v & (v - 1) == 0
                                                    for v in values)):
        raise bad("pow2 applies to int knobs and needs two powers of two")
    return Annotation(form, values)


def _knobs(parsed: _Parsed) -> list[Knob]:
    knobs = []
    for name, node, line, comment, shared in parsed.sites:
        start, end = parsed.segment(node)
        text = parsed.source[start:end]
        try:
            value = ast.literal_eval(node)  # the node itself: no second parse
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            continue  # not a literal: an expression, a call, a name ...
        if (kind := _kind(value)) is not None:
            knobs.append(Knob(name, value, kind, _annotation(comment, line, name, kind, shared), line, text,
                              _node=node))
    return knobs


def find_knobs(source: str) -> list[Knob]:
    """Every top-level `UPPER_CASE = literal` in the script, in source order."""
    return _knobs(_parse(source))


def _propose(knob: Knob, rng: random.Random):
    """One random new value (it may equal the old one; the caller retries)."""
    value, annotation = knob.value, knob.annotation
    if annotation is not None and annotation.form == "choice":
        others = [c for c in annotation.values if c != value]
        return rng.choice(others) if others else value
    if knob.kind == "bool":
        return not value
    lo, hi = annotation.values if annotation is not None else (-math.inf, math.inf)  # a range, if any
    if knob.kind == "int":
        lo, hi = (math.ceil(lo), math.floor(hi)) if annotation is not None else (lo, hi)
        if value >= 1 and value & (value - 1) == 0:  # powers of two stay powers of two
            options = [v for v in (value * 2, value // 2) if v >= 1 and lo <= v <= hi]
            return rng.choice(options) if options else value
        new = value + rng.choice((-1, 1)) * rng.randint(1, max(1, abs(value) // 4))
        return min(max(new if value < 1 else max(new, 1), lo), hi)
    if knob.kind == "float":
        if value > 0:  # scale-free: learning rates and decays live on a log scale
            new = value * math.exp(rng.gauss(0.0, LOG_SIGMA))
        else:  # zero and negatives have no scale to multiply: step additively
            span = hi - lo if math.isfinite(hi - lo) and hi > lo else 0.1
            new = value + rng.gauss(0.0, abs(value) * LOG_SIGMA or 0.1 * span)
        return float(min(max(float(f"{new:.{SIG_DIGITS}g}"), lo), hi)) if math.isfinite(new) else value
    return value  # str and tuple knobs move only through a choice annotation


def _scientific(x: float) -> str:
    """`3e-3` style: shortest exact digits, no padding zeros, no '+' in the exponent."""
    sign, digits, exponent = Decimal(repr(x)).normalize().as_tuple()
    text = "".join(map(str, digits))
    mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
    return f"{'-' if sign else ''}{mantissa}e{exponent + len(text) - 1}"


def _literal(value, style: str) -> str:
    """Source text for a value, in the style of the text it replaces (quote char, 3e-3 notation)."""
    if isinstance(value, tuple):
        inner = ", ".join(_literal(v, style) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    text = repr(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise OperatorFailure(f"knob value {value!r} cannot be written as a literal")
        return _scientific(value) if value and ("e" in text or re.search(r"\d[eE]", style)) else text
    if isinstance(value, str) and text[0] == "'" and '"' not in value \
            and next((c for c in style if c in "'\""), "'") == '"':
        text = '"' + text[1:-1] + '"'  # the replaced text used double quotes: keep them
    return text


def _rewrite(parsed: _Parsed, new_texts: dict[tuple[int, str], str]) -> str:
    """Swap in new value texts for (line, name) knobs; every other byte stays as it was."""
    spans = sorted(((*parsed.segment(k._node), new_texts[(k.line, k.name)]) for k in _knobs(parsed)
                    if (k.line, k.name) in new_texts), reverse=True)
    source = parsed.source
    for start, end, text in spans:
        source = source[:start] + text + source[end:]
    try:
        ast.parse(source)
    except SyntaxError as e:
        raise OperatorFailure(f"knob edit produced a script that does not parse: {e}") from None
    return source


def mutate_knobs(source: str, rng: random.Random, n: int | None = None) -> tuple[str, list[tuple]]:
    """Change n knobs (default: 1 or 2, at random). Returns the new source and (name, old, new) changes."""
    if n is not None and n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    parsed = _parse(source)
    knobs = list({k.name: k for k in _knobs(parsed)}.values())  # per name the last: it takes effect
    wanted = rng.randint(1, 2) if n is None else n
    texts, changes = {}, []
    for knob in rng.sample(knobs, len(knobs)):
        new = next((v for v in (_propose(knob, rng) for _ in range(RETRIES)) if v != knob.value), None)
        if new is None:
            continue  # this knob cannot move (a plain str, or pinned by its annotation)
        text = _literal(new, knob.text)
        if ast.literal_eval(text) != new:
            raise OperatorFailure(f"{knob.name}: {text!r} does not read back as {new!r}")
        texts[(knob.line, knob.name)] = text
        changes.append((knob.name, knob.value, new))
        if len(changes) == wanted:
            break
    if not changes:
        raise OperatorFailure("genome has no mutable knobs: add UPPER_CASE = number assignments at module "
                              "level (e.g. LEARNING_RATE = 3e-3), or '# evo: choice(...)' on str/tuple knobs")
    return _rewrite(parsed, texts), changes


def crossover_knobs(source_a: str, source_b: str, rng: random.Random) -> tuple[str, list[tuple]]:
    """Parent a's script with each knob both share taking b's value with probability 1/2 (at least one)."""
    parsed = _parse(source_a)
    mine = {k.name: k for k in _knobs(parsed)}  # per name the last assignment: it takes effect
    theirs = {k.name: k for k in find_knobs(source_b)}
    differing = [(a, theirs[name]) for name, a in mine.items() if name in theirs and theirs[name].value != a.value]
    if not differing:
        shared = "share no knobs" if not mine.keys() & theirs.keys() else "agree on every shared knob"
        raise OperatorFailure(f"knob crossover needs parents that differ in a knob, but these {shared}")
    taken = [pair for pair in differing if rng.random() < 0.5] or [rng.choice(differing)]
    texts = {(a.line, a.name): b.text for a, b in taken}  # b's own text: its exact value, in its style
    return _rewrite(parsed, texts), [(a.name, a.value, b.value) for a, b in taken]


def describe(changes: list[tuple]) -> str:
    """Human summary for the journal, e.g. 'LEARNING_RATE 0.003 -> 0.0042; DEPTH 2 -> 4'."""
    return "; ".join(f"{name} {old!r} -> {new!r}" for name, old, new in changes)


@contextmanager
def _as_operator_failure():
    """Inside the loop a child's bad annotation must drop that child, not stop the run."""
    try:
        yield
    except UserError as exc:
        raise OperatorFailure(str(exc)) from exc


class KnobMutation:
    """Arity 1: nudge one or two knobs. Offline and instant: a cheap local search step."""
    name, arity = "knob_mutation", 1

    def __init__(self, n: int | None = None):
        self.n = n

    def __call__(self, parents: list[ParentInfo], rng: random.Random,
                 context: OperatorContext | None = None) -> Genome:
        with _as_operator_failure():
            source, changes = mutate_knobs(parents[0].genome.source, rng, self.n)
        return Genome(source=source, parents=tuple(p.genome.id for p in parents),
                      operator=self.name, rationale=describe(changes))


class KnobCrossover:
    """Arity 2: parent a's code with some of parent b's knob settings, so good settings spread."""
    name, arity = "knob_crossover", 2

    def __call__(self, parents: list[ParentInfo], rng: random.Random,
                 context: OperatorContext | None = None) -> Genome:
        a, b = parents[0].genome, parents[1].genome
        with _as_operator_failure():
            source, changes = crossover_knobs(a.source, b.source, rng)
        return Genome(source=source, parents=tuple(p.genome.id for p in parents),
                      operator=self.name, rationale=f"knobs from {b.id}: {describe(changes)}")
