"""Symbolic shape expressions in program.json, checked as text before torch's reader sees them.

torch's deserializer hands each `expr_str` to sympy.sympify, which evals its input: an expression is
accepted only if it holds symbols (s0, u3), numbers, sympy's shape functions and arithmetic, parses as
such (it is never evaluated here), and keeps its literals and exponents small enough that sympy's exact
arithmetic cannot be made to run for minutes.
"""
from __future__ import annotations

import re


class BadExpression(Exception):
    """An expression the artifact check refuses; the message names it (gpt.artifact reports it as BadArtifact)."""


SYMBOL = re.compile(r"(s|u|c|z|f|q|d|r|x|y|p|ps|zf|zuf|idx)[0-9]+")  # torch's symbol prefixes (SymT)
SYMPY_FUNCTIONS = {"FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt",
                   "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
                   "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal",
                   "ToFloat", "Identity", "Max", "Min", "Abs", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or",
                   "Not", "oo", "zoo", "nan", "True", "False", "Integer", "Rational", "Float", "Symbol", "Mul",
                   "Add", "Pow", "Equality", "Unequality", "StrictLessThan", "LessThan", "StrictGreaterThan",
                   "GreaterThan", "BooleanTrue", "BooleanFalse", "Infinity", "NegativeInfinity", "IntInfinity",
                   "NegativeIntInfinity", "positive", "negative", "nonnegative", "nonpositive", "integer", "real",
                   "finite", "infinite", "zero", "nonzero", "even", "odd", "prime", "composite"}
# srepr output: Mul(Integer(32), Symbol('s75', positive=True, integer=True)); quoted text is a symbol name only
SYM_EXPR_TOKEN = re.compile(r"\s+|'[a-z]+[0-9]+'|[A-Za-z_][A-Za-z0-9_]*|[0-9]+(\.[0-9]+)?(e-?[0-9]+)?|"
                            r"[-+*/(),=]")
MAX_LITERAL = 2**40  # no shape needs more; sympy computes big powers and products exactly
POWERS = {"Pow", "PowByNatural", "FloatPow"}
MAX_EXPONENT = 64


def check_sym_expr(text) -> None:
    """A symbolic shape expression: symbols (s0, u3), numbers, sympy's shape functions and arithmetic."""
    if not isinstance(text, str) or len(text) > 2000:
        raise BadExpression("a symbolic expression is not a short string")
    pos = 0
    while pos < len(text):
        m = SYM_EXPR_TOKEN.match(text, pos)
        if m is None:
            raise BadExpression(f"the symbolic expression {text[:100]!r} holds {text[pos:pos + 10]!r}")
        word = m.group(0)
        if word[0].isalpha() or word[0] == "_":  # a bare name: a symbol or one of sympy's names
            if not (SYMBOL.fullmatch(word) or word in SYMPY_FUNCTIONS):
                raise BadExpression(f"the symbolic expression {text[:100]!r} names {word!r}")
        pos = m.end()
    _check_sym_tree(text)


def _check_sym_tree(text: str) -> None:
    """Parse (never evaluate) the expression: calls of allowed names, bounded literals, small exponents."""
    import ast

    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise BadExpression(f"the symbolic expression {text[:100]!r} does not parse") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            if abs(node.value) > MAX_LITERAL:
                raise BadExpression(f"the symbolic expression {text[:100]!r} holds the number {node.value!r}")
        elif isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else None
            if name is None:
                raise BadExpression(f"the symbolic expression {text[:100]!r} calls something that is not a name")
            if name in POWERS:
                exponent = node.args[1] if len(node.args) == 2 else None
                value = _literal(exponent)
                if value is None or abs(value) > MAX_EXPONENT:
                    raise BadExpression(f"the symbolic expression {text[:100]!r} raises to a power that is not a "
                                      f"small number")
        elif isinstance(node, (ast.BinOp,)) and isinstance(node.op, (ast.Pow,)):
            raise BadExpression(f"the symbolic expression {text[:100]!r} uses **")


def _literal(node):
    """An int literal, possibly wrapped as Integer(n) or negated, else None."""
    import ast

    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Integer" and node.args:
        node = node.args[0]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _literal(node.operand)
        return -inner if inner is not None else None
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    return None
