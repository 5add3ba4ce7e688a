"""Parse an LLM answer (idea, rationale, SEARCH/REPLACE blocks) and apply its edits to a script.

The answer format (see evo/prompts/format.txt):

    IDEA: one line
    RATIONALE: a few sentences
    <<<<<<< SEARCH
    exact lines of the current script
    =======
    the lines that replace them
    >>>>>>> REPLACE

or, for a change of knob values only, the IDEA and RATIONALE lines and `KNOBS: NAME=value, ...`
(checked against the script's typed knob space by the operator, evo/operators/space.py).

Each edit is applied in order, to the script as the previous edits left it. Its SEARCH lines
must match one place: first exactly (whole lines, then as text within lines), then ignoring
trailing whitespace, then ignoring a consistent indentation difference (the replacement is
re-indented to match), then also ignoring blank lines. No match, several matches, or a result that does not parse is an
`EditError` whose message is written to be shown to the model in the repair round.
"""
from __future__ import annotations

import ast
import difflib
import re
from dataclasses import dataclass

_SEARCH = re.compile(r"^\s*<{5,9}\s*SEARCH\s*$")
_DIVIDER = re.compile(r"^\s*={5,9}\s*$")
_REPLACE = re.compile(r"^\s*>{5,9}\s*REPLACE\s*$")
_FENCE = re.compile(r"^\s*```")
_IDEA = re.compile(r"^\W*idea\W*:\**\s*(.*)$", re.I)
_RATIONALE = re.compile(r"^\W*rationale\W*:\**\s*(.*)$", re.I)
_KNOBS = re.compile(r"^\W*knobs\W*:\**\s*(.*)$", re.I)
IDEA_MAX = 160
RATIONALE_MAX = 800


class EditError(ValueError):
    """Edits that cannot be parsed or applied; the message is meant for the model."""


@dataclass(frozen=True)
class Edit:
    search: str  # lines joined with "\n", no trailing newline
    replace: str


@dataclass(frozen=True)
class Answer:
    idea: str
    rationale: str
    edits: tuple[Edit, ...]
    knobs: dict | None = None  # a knob proposal (`KNOBS: NAME=value, ...`) instead of edits


def parse_knobs(text: str) -> dict:
    """`NAME=value, NAME=value` (literal values) as a dict; EditError says what is wrong."""
    bad = False
    try:
        call = ast.parse(f"knobs({text})", mode="eval").body
        # exactly the call written above: `NAME=value` keywords, no positional or ** arguments
        bad = not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "knobs"
                   and not call.args and all(k.arg for k in call.keywords)
                   and len({k.arg for k in call.keywords}) == len(call.keywords))
        values = {} if bad else {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except Exception:  # noqa: BLE001 -- SyntaxError, ValueError, RecursionError, MemoryError ...: a bad line
        bad = True
    if bad:
        raise EditError(f"the KNOBS line {text[:200]!r} is not a list of NAME=value pairs with literal values "
                        "(example: KNOBS: LEARNING_RATE=0.004, DEPTH=3), each name once")
    return values


def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def has_edit_blocks(text: str) -> bool:
    """Whether the answer has at least one '<<<<<<< SEARCH' line or a KNOBS line."""
    return any(_SEARCH.match(line) or _KNOBS.match(line) for line in (text or "").splitlines())


def parse_answer(text: str) -> Answer:
    """Idea, rationale and edit blocks of an answer. EditError when there is no edit block or
    a block is malformed."""
    lines = (text or "").replace("\r\n", "\n").split("\n")
    edits: list[Edit] = []
    prose: list[str] = []
    i = 0
    while i < len(lines):
        if not _SEARCH.match(lines[i]):
            if _DIVIDER.match(lines[i]) or _REPLACE.match(lines[i]):
                raise EditError(f"edit block {len(edits) + 1}: found {lines[i].strip()!r} without a "
                                "'<<<<<<< SEARCH' line before it")
            prose.append(lines[i])
            i += 1
            continue
        start = i
        i += 1
        search: list[str] = []
        while i < len(lines) and not _DIVIDER.match(lines[i]):
            if _SEARCH.match(lines[i]) or _REPLACE.match(lines[i]):
                break
            search.append(lines[i])
            i += 1
        if i >= len(lines) or not _DIVIDER.match(lines[i]):
            raise EditError(f"edit block {len(edits) + 1} (line {start + 1} of your answer) has no '=======' "
                            "line between its SEARCH and REPLACE parts")
        i += 1
        replace: list[str] = []
        while i < len(lines) and not _REPLACE.match(lines[i]):
            if _SEARCH.match(lines[i]):
                break
            replace.append(lines[i])
            i += 1
        if i >= len(lines) or not _REPLACE.match(lines[i]):
            raise EditError(f"edit block {len(edits) + 1} (line {start + 1} of your answer) does not end with "
                            "a '>>>>>>> REPLACE' line")
        i += 1
        edits.append(Edit("\n".join(search), "\n".join(replace)))
    knobs = next((parse_knobs(m.group(1)) for m in map(_KNOBS.match, prose) if m), None)
    if not edits and not knobs:
        raise EditError("the answer has no edit block; give at least one '<<<<<<< SEARCH' / '=======' / "
                        "'>>>>>>> REPLACE' block, or a 'KNOBS: NAME=value, ...' line")
    if edits and knobs:
        raise EditError("the answer has both edit blocks and a KNOBS line; give one or the other")
    idea, rationale = _header([line for line in prose if not _KNOBS.match(line)])
    return Answer(idea=idea, rationale=rationale, edits=tuple(edits), knobs=knobs)


def _header(prose: list[str]) -> tuple[str, str]:
    idea, rationale, in_rationale = "", [], False
    for line in prose:
        if _FENCE.match(line):
            in_rationale = False
            continue
        m = _IDEA.match(line)
        if m and not idea:
            idea, in_rationale = m.group(1), False
            continue
        m = _RATIONALE.match(line)
        if m:
            rationale, in_rationale = [m.group(1)], True
            continue
        if in_rationale:
            rationale.append(line)
    if not idea:  # no IDEA line: the first line of prose
        idea = next((line.strip().strip("#*").strip() for line in prose if line.strip() and not _FENCE.match(line)),
                    "")
    return _one_line(idea, IDEA_MAX) or "(no idea line)", _one_line(" ".join(rationale), RATIONALE_MAX)


# -------------------------------------------------------------------- applying
def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _matches(hay: list[str], needle: list[str], mode: str) -> list[tuple[int, int, str, str]]:
    """(start, end, source prefix, search prefix) of every place `needle` matches in `hay`.

    The prefixes say how to re-indent the replacement: a line starting with the search
    prefix gets it swapped for the source prefix."""
    if mode == "loose":  # ignore blank lines on both sides
        positions = [k for k, line in enumerate(hay) if line.strip()]
        hay_lines = [hay[k] for k in positions]
        needle = [line for line in needle if line.strip()]
    else:
        positions = list(range(len(hay)))
        hay_lines = hay
    n = len(needle)
    if n == 0:
        return []
    found = []
    for s in range(len(hay_lines) - n + 1):
        window = hay_lines[s:s + n]
        if mode == "exact":
            ok, src_pre, srch_pre = window == needle, "", ""
        elif mode == "rstrip":
            ok, src_pre, srch_pre = all(a.rstrip() == b.rstrip() for a, b in zip(window, needle)), "", ""
        else:  # "indent" / "loose": same text after a consistent indentation change
            ok, src_pre, srch_pre = _same_but_indent(window, needle)
        if ok:
            found.append((positions[s], positions[s + n - 1] + 1, src_pre, srch_pre))
    return found


def _same_but_indent(window: list[str], needle: list[str]) -> tuple[bool, str, str]:
    """Whether every non-blank script line equals src_extra + (search line without srch_extra):
    the same text under one consistent indentation change. Returns (ok, src_extra, srch_extra)."""
    pairs = [(a.rstrip(), b.rstrip()) for a, b in zip(window, needle)]
    if any(a.strip() != b.strip() for a, b in pairs):
        return False, "", ""
    nonblank = [(a, b) for a, b in pairs if a.strip()]
    if not nonblank:
        return False, "", ""
    ia, ib = _indent(nonblank[0][0]), _indent(nonblank[0][1])
    if ia.startswith(ib):
        src_extra, srch_extra = ia[len(ib):], ""
    elif ib.startswith(ia):
        src_extra, srch_extra = "", ib[len(ia):]
    else:  # e.g. tabs against spaces
        src_extra, srch_extra = ia, ib
    for a, b in nonblank:
        if not b.startswith(srch_extra) or a != src_extra + b[len(srch_extra):]:
            return False, "", ""
    return True, src_extra, srch_extra


def _reindent(lines: list[str], src_extra: str, srch_extra: str) -> list[str]:
    out = []
    for line in lines:
        if not line.strip():
            out.append(line.strip())
        elif line.startswith(srch_extra):
            out.append(src_extra + line[len(srch_extra):])
        else:
            out.append(src_extra + line.lstrip())
    return out


def _closest(source_lines: list[str], needle: list[str]) -> str:
    """The region of the script that looks most like the SEARCH lines, to show the model."""
    first = next((line.strip() for line in needle if line.strip()), "")
    stripped = [line.strip() for line in source_lines]
    best = difflib.get_close_matches(first, stripped, n=1, cutoff=0.5)
    if not best:
        return ""
    k = stripped.index(best[0])
    region = source_lines[k:k + max(len(needle), 1) + 1]
    return "\n".join(region)


def _find_all(text: str, part: str) -> list[int]:
    out, k = [], text.find(part)
    while k >= 0:
        out.append(k)
        k = text.find(part, k + 1)
    return out


def apply_edit(source: str, edit: Edit, index: int = 1) -> str:
    """Apply one edit (see module doc). `index` numbers it in error messages."""
    if not edit.search.strip():
        raise EditError(f"edit block {index}: the SEARCH part is empty; copy the exact lines of the current "
                        "script that you want to replace")
    trailing_newline = source.endswith("\n")
    hay = source.split("\n")
    if trailing_newline:
        hay = hay[:-1]
    needle = edit.search.split("\n")
    replacement = edit.replace.split("\n") if edit.replace != "" else []
    for mode in ("exact", "substring", "rstrip", "indent", "loose"):
        if mode == "substring":  # exact text inside lines, e.g. a line quoted without its trailing comment
            count = source.count(edit.search)
            if count == 1:
                return source.replace(edit.search, edit.replace, 1)
            if count > 1:
                lines = sorted({source[:k].count("\n") + 1 for k in _find_all(source, edit.search)})
                raise EditError(f"edit block {index}: the SEARCH text occurs {count} times in the script (lines "
                                f"{', '.join(map(str, lines[:6]))}); add surrounding lines so that it matches "
                                "exactly one place")
            continue
        found = _matches(hay, needle, mode)
        if len(found) > 1:
            lines = ", ".join(str(f[0] + 1) for f in found[:6])
            raise EditError(f"edit block {index}: the SEARCH lines match {len(found)} places in the script "
                            f"(lines {lines}); add surrounding lines so that they match exactly one place")
        if found:
            start, end, src_extra, srch_extra = found[0]
            new = replacement if mode in ("exact", "rstrip") else _reindent(replacement, src_extra, srch_extra)
            result = hay[:start] + new + hay[end:]
            return "\n".join(result) + ("\n" if trailing_newline else "")
    hint = _closest(hay, needle)
    message = (f"edit block {index}: the SEARCH lines do not match the current script (even ignoring "
               "whitespace); SEARCH must copy lines of the script exactly, including the earlier edits' results")
    if hint:
        message += f". The closest lines in the script are:\n{hint}"
    raise EditError(message)


def apply_edits(source: str, edits: tuple[Edit, ...] | list[Edit]) -> str:
    """Apply every edit in order; EditError if one does not apply."""
    for k, edit in enumerate(edits, 1):
        source = apply_edit(source, edit, k)
    return source


def check_python(source: str) -> None:
    """EditError (with the line) if the script does not parse or cannot be written as UTF-8."""
    try:
        source.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EditError(f"after the edits the script holds a character that is not valid Unicode ({exc.reason} "
                        f"at offset {exc.start}); write plain text") from None
    try:
        ast.parse(source)
    except (ValueError, RecursionError, MemoryError) as exc:
        raise EditError(f"after the edits the script cannot be parsed: {type(exc).__name__}") from None
    except SyntaxError as exc:
        line = ""
        if exc.lineno:
            lines = source.splitlines()
            if 0 < exc.lineno <= len(lines):
                line = f": {lines[exc.lineno - 1].strip()!r}"
        raise EditError(f"after the edits the script does not parse: {exc.msg} at line {exc.lineno}{line}") from None
