"""Knob operators: finding, mutating and crossing over UPPER_CASE constants without touching anything else."""
import ast
import math
import random
from pathlib import Path

import pytest

from evo.genome import Genome, OperatorContext, OperatorFailure, ParentInfo
from evo.operators.knobs import KnobCrossover, KnobMutation, crossover_knobs, find_knobs, mutate_knobs
from gpt.errors import UserError

TINY_CPU = (Path(__file__).resolve().parent.parent / "genomes" / "tiny_cpu.py").read_text()
# tiny_cpu's knob block alone: the same annotations, cheap enough for long mutation walks
TINY_KNOBS = "".join(line for line in TINY_CPU.splitlines(keepends=True) if line[:1].isupper() and " = " in line)

MIXED = '''"""A made-up genome with every kind of knob."""
# a header comment
import math

LEARNING_RATE = 3e-3
EPS = 1e-8
OFFSET   =   -0.5   # odd spacing stays odd
SHIFT = -3
DROPOUT = 0.0  # evo: range(0.0, 0.5)
DEPTH = 6  # evo: range(1, 12)
HEADS = 4  # evo: choice(1, 2, 4)
WIDTH = 500  # evo: range(32, 512)
USE_BIAS = False
PATTERN = "SSSL"  # evo: choice("SSSL", "L", "SL")
BETAS = (0.9, 0.95)  # evo: choice((0.9, 0.95), (0.8, 0.99))
RUN_NAME = "mixed"


def helper():
    INNER = 5  # not module level: not a knob
    return INNER * LEARNING_RATE
'''


def knob_values(source):
    return {k.name: k.value for k in find_knobs(source)}


def assert_only_values_changed(old_source, new_source):
    """Every line is byte-identical except knob lines, and on those only the value text differs."""
    old_lines, new_lines = old_source.splitlines(keepends=True), new_source.splitlines(keepends=True)
    assert len(old_lines) == len(new_lines)
    knobs = {k.line: k for k in find_knobs(old_source)}
    for number, (old, new) in enumerate(zip(old_lines, new_lines), start=1):
        if old == new:
            continue
        assert number in knobs, f"non-knob line {number} changed: {old!r} -> {new!r}"
        text = knobs[number].text
        start = old.index("=") + old[old.index("=") + 1:].index(text) + 1
        prefix, suffix = old[:start], old[start + len(text):]
        assert new.startswith(prefix) and new.endswith(suffix), (old, new)
        ast.literal_eval(new[len(prefix):len(new) - len(suffix)])


def is_power_of_two(n):
    return n >= 1 and n & (n - 1) == 0


def test_finds_the_knobs_of_tiny_cpu_with_kinds_annotations_and_lines():
    knobs = find_knobs(TINY_CPU)
    assert [k.name for k in knobs] == ["DEPTH", "WIDTH", "HEADS", "SEQ_LEN", "BATCH_SIZE", "LEARNING_RATE",
                                       "WEIGHT_DECAY", "WARMUP_FRACTION", "WARMDOWN_FRACTION", "ROPE_BASE",
                                       "GRAD_CLIP"]
    by_name = {k.name: k for k in knobs}
    assert by_name["DEPTH"].kind == "int" and by_name["LEARNING_RATE"].kind == "float"
    assert by_name["LEARNING_RATE"].value == 0.003 and by_name["LEARNING_RATE"].text == "3e-3"
    assert by_name["HEADS"].annotation.form == "choice" and by_name["HEADS"].annotation.values == (1, 2, 4, 8)
    assert by_name["WARMUP_FRACTION"].annotation.values == (0.0, 0.5)
    assert by_name["GRAD_CLIP"].annotation.form == "log" and by_name["GRAD_CLIP"].annotation.values == (0.1, 10.0)
    assert by_name["WIDTH"].annotation.form == "pow2" and by_name["WIDTH"].annotation.values == (32, 512)
    lines = TINY_CPU.splitlines()
    assert all(lines[k.line - 1].startswith(f"{k.name} = ") for k in knobs)


def test_finds_only_module_level_upper_case_literals():
    source = ('X_1 = 1\nlower = 2\nMixed_Case = 3\nEXPR = 2 * 3\nCALL = int("4")\nLIST = [1, 2]\nNONE = None\n'
              'A = B = 5\nTYPED: float = 2.5\nif True:\n    NESTED = 6\nclass C:\n    ATTR = 7\n'
              'NEG = -4\nSCI = -2.5E-3\nFLAG = True\nPAIR = (1, "a", 2.0)\nNESTED_TUPLE = ((1, 2), 3)\nS = \'x\'\n')
    kinds = {k.name: k.kind for k in find_knobs(source)}
    assert kinds == {"X_1": "int", "TYPED": "float", "NEG": "int", "SCI": "float", "FLAG": "bool",
                     "PAIR": "tuple", "S": "str"}
    assert knob_values(source)["SCI"] == -0.0025


def test_line_numbers_count_header_comments_multiline_statements_and_continuations():
    source = ('# comment\n\n"""doc\nstring"""\nx = (1,\n     2)\ny = 1 + \\\n    2\n\n\n@staticmethod\ndef f():\n'
              '    return """\n    a\n    """\n\n\ntry:\n    import os\nexcept ImportError:\n    pass\n# lead\n'
              'A = 1; B = 2\nC = (\n    1,\n    2,\n)  # evo: choice((1, 2), (3,))\nD = 4\n')
    lines = source.splitlines()
    knobs = find_knobs(source)
    assert [(k.name, k.line) for k in knobs] == [("A", 23), ("B", 23), ("C", 24), ("D", 28)]
    assert all(lines[k.line - 1].startswith(f"{k.name} = ") or "; B = " in lines[k.line - 1] for k in knobs)
    assert knobs[2].annotation.values == ((1, 2), (3,))


def test_mutation_changes_only_the_value_text_of_knob_lines():
    for seed in range(15):
        new, changes = mutate_knobs(TINY_CPU, random.Random(seed), n=3)
        assert len(changes) == 3
        assert_only_values_changed(TINY_CPU, new)
        values = knob_values(new)
        for name, old, value in changes:
            assert value != old and math.isclose(values[name], value)


def test_mutation_keeps_odd_spacing_and_comments_byte_for_byte():
    source = "A   =   3e-3   # keep me   \n\n\n# and me\nB=2#tight\n"
    for seed in range(20):
        new, _ = mutate_knobs(source, random.Random(seed), n=2)
        assert_only_values_changed(source, new)
        assert new.split("=")[0] == "A   " and "   # keep me   \n\n\n# and me\nB=" in new and new.endswith("#tight\n")


def test_mutation_by_default_moves_one_or_two_knobs_and_is_deterministic_per_seed():
    counts = {len(mutate_knobs(MIXED, random.Random(seed))[1]) for seed in range(30)}
    assert counts == {1, 2}
    assert mutate_knobs(MIXED, random.Random(7)) == mutate_knobs(MIXED, random.Random(7))


def test_annotations_ranges_and_powers_of_two_hold_along_long_mutation_walks():
    for walk in range(3):
        rng, source = random.Random(walk), TINY_KNOBS
        for _ in range(100):
            source, _ = mutate_knobs(source, rng, n=3)
            v = knob_values(source)
            assert v["HEADS"] in (1, 2, 4, 8) and v["SEQ_LEN"] in (64, 128, 256)
            assert 1 <= v["DEPTH"] <= 8 and 32 <= v["WIDTH"] <= 512 and 4 <= v["BATCH_SIZE"] <= 128
            assert all(is_power_of_two(v[name]) for name in ("DEPTH", "WIDTH", "BATCH_SIZE"))
            assert 0.0 <= v["WARMUP_FRACTION"] <= 0.5 and 0.0 <= v["WARMDOWN_FRACTION"] <= 0.9
            assert v["LEARNING_RATE"] > 0 and v["ROPE_BASE"] > 0
            assert all(isinstance(v[name], float) for name in ("LEARNING_RATE", "WARMUP_FRACTION", "GRAD_CLIP"))


def test_every_kind_of_knob_mutates_into_a_parsing_script_over_200_seeds():
    rng, source = random.Random(0), MIXED
    for seed in range(200):
        new, changes = mutate_knobs(source, random.Random(seed), n=rng.randint(1, 3))
        ast.parse(new)
        assert_only_values_changed(source, new)
        v = knob_values(new)
        assert v["PATTERN"] in ("SSSL", "L", "SL") and v["BETAS"] in ((0.9, 0.95), (0.8, 0.99))
        assert v["HEADS"] in (1, 2, 4) and 1 <= v["DEPTH"] <= 12 and 32 <= v["WIDTH"] <= 512
        assert 0.0 <= v["DROPOUT"] <= 0.5 and v["RUN_NAME"] == "mixed"
        assert isinstance(v["SHIFT"], int) and isinstance(v["OFFSET"], float)
        assert "INNER = 5" in new
        source = new if seed % 2 else MIXED  # half the time keep walking from the child


def test_numbers_follow_their_scale_rules():
    seen = {name: set() for name in ("DEPTH", "WIDTH", "LEARNING_RATE", "EPS", "SHIFT", "USE_BIAS")}
    for seed in range(150):
        _, changes = mutate_knobs(MIXED, random.Random(seed), n=3)
        for name, old, new in changes:
            if name in seen:
                seen[name].add(new)
            if name == "LEARNING_RATE":
                assert 0.003 / 20 < new < 0.003 * 20  # a log-scale nudge, not a jump
    assert seen["DEPTH"] == {5, 7}  # 6 is no power of two: a step of +-1 (25% of 6 rounds down to 1)
    assert len(seen["WIDTH"]) > 5 and all(375 <= w <= 512 for w in seen["WIDTH"])  # +-25%, clipped to the range
    assert seen["USE_BIAS"] == {True}
    assert seen["SHIFT"] == {-4, -2}


def test_scientific_notation_and_double_quotes_keep_their_style():
    for seed in range(40):
        new, changes = mutate_knobs(MIXED, random.Random(seed), n=3)
        line = {k.name: k for k in find_knobs(new)}
        assert "e-" in line["LEARNING_RATE"].text and "e-" in line["EPS"].text
        assert line["PATTERN"].text.startswith('"')
        for k in line.values():
            if k.kind == "float" and "e" not in k.text:
                assert len(k.text) <= 8, k.text  # rounded, readable


def test_str_and_tuple_knobs_change_only_through_their_choice():
    source = 'PATTERN = "SSSL"  # evo: choice("SSSL", "L")\nBETAS = (0.9, 0.95)  # evo: choice((0.9, 0.95), (0.8,))\n'
    new, changes = mutate_knobs(source, random.Random(1), n=2)
    assert dict((name, value) for name, _, value in changes) == {"PATTERN": "L", "BETAS": (0.8,)}
    assert new == 'PATTERN = "L"  # evo: choice("SSSL", "L")\nBETAS = (0.8,)  # evo: choice((0.9, 0.95), (0.8,))\n'


def test_a_genome_without_mutable_knobs_is_an_operator_failure_with_a_hint():
    for source in ("x = 1\nprint(x)\n", 'NAME = "fixed"\n', "ONLY = 4  # evo: choice(4)\n",
                   "PINNED = 8  # evo: range(5, 15)\nFLAT = 0.5  # evo: range(0.5, 0.5)\nONE = 1  # evo: range(1, 1)\n"):
        with pytest.raises(OperatorFailure, match="no mutable knobs: add UPPER_CASE = number"):
            mutate_knobs(source, random.Random(0))


@pytest.mark.parametrize("annotation", ['choice(1, foo)', 'range(1)', 'range(5, 1)', 'banana(1, 2)', 'range(1, 2',
                                        'choice()', '__import__("os").getcwd()', 'choice(__import__("os"))',
                                        'range(lo=1, hi=2)', 'range("a", "b")'])
def test_a_bad_annotation_is_a_user_error_naming_the_line_and_the_allowed_forms(annotation):
    source = f"import os\n\nDEPTH = 2  # evo: {annotation}\n"
    with pytest.raises(UserError, match=r"line 3 \(DEPTH\).*Allowed forms: '# evo: choice\(v1, v2, \.\.\.\)'"):
        find_knobs(source)


def test_range_on_a_string_knob_is_a_user_error():
    with pytest.raises(UserError, match="range only applies to number knobs"):
        find_knobs('MODE = "fast"  # evo: range(1, 2)\n')


def test_crossover_takes_every_value_from_one_parent_or_the_other():
    other = (MIXED.replace("3e-3", "0.010").replace("DEPTH = 6", "DEPTH = 3").replace('PATTERN = "SSSL"', "PATTERN = 'L'")
             .replace("USE_BIAS = False", "USE_BIAS = True").replace("OFFSET   =   -0.5", "OFFSET = 0.25"))
    a, b = knob_values(MIXED), knob_values(other)
    from_b_seen = set()
    for seed in range(60):
        child, changes = crossover_knobs(MIXED, other, random.Random(seed))
        assert_only_values_changed(MIXED, child)
        assert changes and all(b[name] == new and a[name] == old for name, old, new in changes)
        c = knob_values(child)
        assert all(c[name] in (a[name], b[name]) for name in a)
        from_b_seen |= {name for name in a if c[name] != a[name]}
        if "LEARNING_RATE" in {name for name, _, _ in changes}:
            assert "\nLEARNING_RATE = 0.010\n" in child  # b's own text, not reformatted
    assert from_b_seen == {"LEARNING_RATE", "DEPTH", "PATTERN", "USE_BIAS", "OFFSET"}


def test_crossover_of_parents_that_agree_is_an_operator_failure():
    with pytest.raises(OperatorFailure, match="agree on every shared knob"):
        crossover_knobs(MIXED, MIXED.replace("# a header comment", "# reworded"), random.Random(0))
    with pytest.raises(OperatorFailure, match="share no knobs"):
        crossover_knobs(MIXED, "OTHER = 1\n", random.Random(0))


def test_operators_make_genomes_with_provenance_and_a_readable_rationale():
    seed = Genome(source=TINY_CPU)
    child = KnobMutation(n=2)([ParentInfo(seed)], random.Random(5))
    assert (KnobMutation.name, KnobMutation.arity) == ("knob_mutation", 1)
    assert child.operator == "knob_mutation" and child.parents == (seed.id,) and child.id != seed.id
    assert child.rationale.count(" -> ") == 2 and child.rationale.count("; ") == 1

    other = Genome(source=TINY_CPU.replace("LEARNING_RATE = 3e-3", "LEARNING_RATE = 1e-3"))
    crossed = KnobCrossover()([ParentInfo(seed), ParentInfo(other)], random.Random(0))
    assert (KnobCrossover.name, KnobCrossover.arity) == ("knob_crossover", 2)
    assert crossed.parents == (seed.id, other.id) and crossed.operator == "knob_crossover"
    assert crossed.source == other.source and crossed.rationale == f"knobs from {other.id}: LEARNING_RATE 0.003 -> 0.001"


def test_operators_accept_a_context_and_ignore_it():
    seed = Genome(source=TINY_CPU)
    other = Genome(source=TINY_CPU.replace("LEARNING_RATE = 3e-3", "LEARNING_RATE = 1e-3"))
    ctx = OperatorContext(noise_floor=0.01, history=({"child": "c", "idea": "lower the lr"},), memory="note")
    cases = ((KnobMutation(n=2), [ParentInfo(seed)]), (KnobCrossover(), [ParentInfo(seed), ParentInfo(other)]))
    for op, parents in cases:
        plain = op(parents, random.Random(3))
        given = op(parents, random.Random(3), ctx)
        assert (given.source, given.rationale) == (plain.source, plain.rationale)
        assert op(parents, random.Random(3), context=None).source == plain.source
