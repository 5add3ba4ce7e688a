"""Red-team tests for the knob search: the KNOBS answer line, study/history text, adversarial genome
sources, structure ids and the crowning rule. A test passes when the guard holds; known breaks are
xfail(strict=True) so the suite stays green and a fix shows up as an XPASS."""
import difflib
import math
import random
from pathlib import Path

import pytest

from evo import fitness as fit
from evo.genome import Genome, OperatorContext, OperatorFailure, ParentInfo
from evo.llm import LLMClient, LLMConfig, LLMMutation
from evo.operators.space import knob_space, structure_id, write_values
from evo.operators.studies import CMAESSearch, Study, TPESearch, Trial, study_text
from gpt.errors import UserError
from llm_server import LLMServer, answer
from tests.synthetic import add_child, fake, finish, new_run

ROOT = Path(__file__).resolve().parent.parent
TINY = (ROOT / "genomes" / "tiny_cpu.py").read_text()
KEY_ENV = "EVO_TEST_RT_KEY"


def xfail(reason):
    return pytest.mark.xfail(strict=True, reason=reason)


@pytest.fixture
def server():
    with LLMServer() as s:
        yield s


def client(server, run_dir):
    config = LLMConfig.from_dict({"max_retries": 1, "backoff_s": 0.01, "history_rows": 10, "models": [
        {"model": "m", "base_url": server.base_url, "api_key_env": KEY_ENV, "price_in_per_m": 1.0,
         "price_out_per_m": 1.0, "timeout_s": 5.0}]})
    return LLMClient(config, run_dir, lambda call: None, random.Random(1), environ={KEY_ENV: "sk-test"})


def mutate(server, tmp_path, first, parent_source=TINY, repair="KNOBS: DEPTH=3"):
    """One LLM mutation through the real local server: `first`, then (if asked) the repair answer."""
    server.script(answer(f"IDEA: x\nRATIONALE: y\n{first}"), answer(f"IDEA: x\nRATIONALE: y\n{repair}"))
    parent = ParentInfo(genome=Genome(parent_source), mean_val_bpb=2.0, n_evals=2, noise_floor=0.01)
    return LLMMutation(client(server, tmp_path))([parent], random.Random(0))


def changed_lines(a: str, b: str) -> list[str]:
    return [l[1:] for l in difflib.unified_diff(a.splitlines(), b.splitlines(), lineterm="", n=0)
            if l[:1] in "+-" and not l.startswith(("+++", "---"))]


# ------------------------------------------------------------------ 1. the KNOBS line
@pytest.mark.parametrize("knobs", [
    "LEARNING_RATE=__import__('os').system('id')",
    "DEPTH=3; import os",
    "learning_rate=0.01",  # a different case: not a knob
    "ＤＥＰＴＨ=3",  # NFKC: Python reads it as DEPTH
    "LEARNING_RATE='nan'",
    "LEARNING_RATE=1e999",  # inf: refused, a repair round
    "DEPTH=True",  # a bool for an int: refused
    "DEPTH=1, DEPTH=2",
    "DEPTH=" + "9" * 5000,  # beyond Python's int digit limit
    "DEPTH=3, " + ", ".join(f"K{i}=1" for i in range(3000)),  # a very long line
    pytest.param("DEPTH=1), __import__('os').system('id'), (1"),  # the body is a tuple, not the call
    pytest.param("DEPTH=3) or __import__('os') or (1"),  # the body is a BoolOp
    pytest.param("**{'DEPTH': 3}"),
    pytest.param("DEPTH=1e999"),
    pytest.param("WIDTH=1e999"),
    pytest.param("DEPTH='inf'"),
    pytest.param("DEPTH=0x" + "f" * 300),
    pytest.param("DEPTH=(1, 2)"),
    pytest.param("DEPTH=None"),
    pytest.param("DEPTH=" + "1+" * 100000 + "1"),
    pytest.param("HEADS=True"),
])
def test_a_knobs_answer_changes_only_knob_values_or_is_an_operator_failure(server, tmp_path, knobs):
    try:
        child = mutate(server, tmp_path, f"KNOBS: {knobs}")
    except OperatorFailure:
        return  # journaled by the breeder: fine
    assert structure_id(child.source) == structure_id(TINY)
    names = knob_space(TINY)[0].names
    assert all(line.split(" = ")[0] in names for line in changed_lines(TINY, child.source))
    old, new = knob_space(TINY)[1], knob_space(child.source)[1]
    assert all(type(new[k]) is type(old[k]) for k in old)
    assert "import" not in "".join(changed_lines(TINY, child.source))


def test_a_form_feed_in_a_comment_does_not_move_a_knob_write_onto_another_line(server, tmp_path):
    parent = "# section\x0cone\nx = 1\nB = 2\n"
    try:
        child = mutate(server, tmp_path, "KNOBS: B=4", parent_source=parent, repair="KNOBS: B=8")
    except OperatorFailure:
        return
    assert "x = 1" in child.source and knob_space(child.source)[1]["B"] in (4, 8)


def test_a_line_separator_in_a_string_does_not_hide_the_next_knobs_annotation():
    space, _ = knob_space('S = "a\u2028b"\nB = 2\nC = 3  # evo: range(1, 9)\n')
    c = {d.name: d for d in space.dimensions}["C"]
    assert (c.low, c.high) == (1, 9)


def test_a_lone_surrogate_in_an_answer_is_an_operator_failure(server, tmp_path):
    block = "<<<<<<< SEARCH\nDEPTH = 2  # evo: range(1, 8)\n=======\nDEPTH = 3  # \udc80\n>>>>>>> REPLACE"
    with pytest.raises(OperatorFailure):
        mutate(server, tmp_path, block, repair=block)


def test_a_knobs_answer_on_a_parent_with_a_bad_annotation_is_an_operator_failure(server, tmp_path):
    parent = TINY + "\nEXTRA = 1.0  # evo: log(0, 1)\n"
    with pytest.raises(OperatorFailure):
        mutate(server, tmp_path, "KNOBS: DEPTH=3", parent_source=parent)


# ------------------------------------------------------------------ 2. nothing held-out in a prompt
def _trials(penalty: float):
    space, own = knob_space(TINY)
    rng = random.Random(0)
    trials = [Trial("seed", own, 2.0, 3, val_mean=2.0)]
    for k in range(14):
        values = space.from_unit([rng.random() for _ in space.dimensions])
        val = 2.0 + 0.01 * k
        trials.append(Trial(f"c{k}", values, val + (penalty if k % 3 == 0 else 0.0), 1, val_mean=val))
    return Study("s", space, tuple(trials), noise_floor=0.01)


def test_the_study_text_without_cma_does_not_depend_on_penalties():
    assert study_text(_trials(0.0), with_cma=False) == study_text(_trials(0.5), with_cma=False)
    assert "2.5" not in study_text(_trials(0.5), with_cma=False)


def test_the_study_text_with_cma_does_not_depend_on_penalties():
    assert study_text(_trials(0.0)) == study_text(_trials(0.5))


def _history_after_child(tmp_path, heldout_gap: float) -> tuple:
    run = new_run(tmp_path, ROOT / "genomes" / "tiny_cpu.py", noise_repeats=2, evals=0)
    for val in (3.0, 3.02):
        finish(run, run.next_evaluation(), fake(val=val))
    row = add_child(run, TINY.replace("DEPTH = 2", "DEPTH = 3"), "deeper")
    finish(run, row, fake(val=2.9, heldout=2.9 + 0.01 + heldout_gap))
    return run.state.history(10), run.breeder.context(row.genome_id), run.state.records[row.genome_id]


# The history's status words (candidate, confirmed) are decisions on fitness, which includes the
# penalty from Thresholdout's answer: that answer is what the reusable holdout is built to release
# (budgeted, noised), as selection does. No held-out number reaches a prompt (next test).
def test_a_penalty_does_not_change_the_study_a_prompt_shows(tmp_path):
    _, clean_ctx, _ = _history_after_child(tmp_path / "a", 0.0)
    _, pen_ctx, rec = _history_after_child(tmp_path / "b", 1.0)
    assert rec.penalty > 0.5
    assert study_text(clean_ctx.study) == study_text(pen_ctx.study)


def test_history_and_study_hold_no_held_out_numbers(tmp_path):
    history, ctx, rec = _history_after_child(tmp_path / "run", 1.0)
    text = repr(history) + study_text(ctx.study)
    assert rec.penalty > 0.5 and "2.9000" in text  # the val mean is shown
    for secret in (rec.answer, rec.penalty, -rec.fitness, 3.91):
        assert f"{secret:.4f}" not in text and f"{secret:.3f}" not in text and repr(secret) not in text


# ------------------------------------------------------------------ 3. adversarial genome sources
def _many(source: str) -> Study:
    space, own = knob_space(source)
    rng = random.Random(0)
    trials = [Trial("s", own, 1.0, 1, val_mean=1.0)] + [
        Trial(f"g{i}", space.from_unit([rng.random() for _ in space.dimensions]), 1.0 + 0.01 * i, 1,
              val_mean=1.0 + 0.01 * i) for i in range(8)]
    return Study("x", space, tuple(trials), 0.01)


Y = "\nY = 0.5\n"
SOURCES = [
    "X = 3\t# evo: range(1, 9)\nY = 0.5; Z = 2\n",
    "X = (\n  3\n)  # evo: range(1, 9)" + Y,
    "if True:\n    X = 3  # evo: range(1, 9)" + Y,
    "X = 3  # evo: range(1, 9)\nX = 500  # evo: pow2(1, 2)" + Y,
    "X = 3\ndef X():\n    pass" + Y,
    "X = -0.0  # evo: range(-1, 1)" + Y,
    "X = 100  # evo: range(1, 9)" + Y,
    "X = 1.0  # evo: log(0, 1)" + Y,
    "X = 4  # evo: pow2(3, 5)" + Y,
    "X = 1.0  # evo: range(1e308, inf)" + Y,
    "X = 1  # evo: range(True, False)" + Y,
    pytest.param("X = 'é\x0c\u2028'  # evo: choice('é\x0c\u2028', 'b')" + Y),
    "X = 1  # \x00" + Y,
    "X = 1  # \udc80" + Y,
    pytest.param("X = 1e308  # evo: range(0, 2e308)" + Y),
    pytest.param("X = 1" + "0" * 400 + Y),
    pytest.param("X = 5e-324" + Y),
    pytest.param("X = 1  # evo: range(0.5, 0.7)" + Y),
    pytest.param("X = 1e308" + Y),
    pytest.param("X = 1.0  # evo: range(0, 1e309)" + Y),
]


@pytest.mark.parametrize("source", SOURCES)
def test_an_adversarial_genome_never_crashes_the_knob_search(source):
    try:
        space, _ = knob_space(source)
        structure_id(source)
    except (OperatorFailure, UserError):
        return
    if not space.dimensions:
        return
    parent = [ParentInfo(genome=Genome(source))]
    for op in (TPESearch(), CMAESSearch()):
        for seed in range(3):
            try:
                child = op(parent, random.Random(seed), OperatorContext(study=_many(source)))
            except OperatorFailure:
                continue
            assert structure_id(child.source) == structure_id(source)


# ------------------------------------------------------------------ 4. structures
def test_code_changes_change_the_structure():
    assert structure_id("X = 3\ny = 1\n") != structure_id("X = 3\ny = 2\n")
    assert structure_id("if True:\n    X = 3\n") != structure_id("if True:\n    X = 4\n")
    assert structure_id("X: int = 3\n") != structure_id("X: float = 3\n")
    assert structure_id("X = 3\nX += 1\n") != structure_id("X = 3\nX += 2\n")


@pytest.mark.parametrize("a, b", [
    pytest.param("LR = 0.1\nLR = LR * 2\n", "LR = 0.1\nLR = min(LR, 1e-3)\n"),
    pytest.param("X = 3  # evo: range(1, 9)\n", "X = None\n"),
    pytest.param("X = 3\n", "X = 'a'  # evo: choice('a', 'b')\n"),
    pytest.param('# -*- coding: latin-1 -*-\nS = "é"\n', 'S = "é"\n'),
])
def test_programs_that_differ_outside_knob_values_have_different_structures(a, b):
    assert structure_id(a) != structure_id(b)


@pytest.mark.parametrize("child", [
    pytest.param("X = None\nY = 0.5\n"),
    pytest.param("X = 'a'  # evo: choice('a', 'b')\nY = 0.5\n"),
])
def test_a_pooled_trial_of_another_shape_does_not_crash_the_breeders_cmaes(tmp_path, child):
    seed = tmp_path / "seed.py"
    seed.write_text("X = 3  # evo: range(1, 9)\nY = 0.5\n")
    run = new_run(tmp_path / "run", seed, noise_repeats=2, evals=0)
    for val in (3.0, 3.02):
        finish(run, run.next_evaluation(), fake(val=val))
    finish(run, add_child(run, child, "other"), fake(val=2.95))
    sid = run.state.seed_ids[0]
    assert len(run.breeder.study(sid).trials) == 1  # another shape: never pooled into the seed's study
    try:
        run.breeder.toolbox.cmaes([run.state.parent_info(sid)], random.Random(0), run.breeder.context(sid))
    except OperatorFailure:
        pass


# ------------------------------------------------------------------ 5. crowning
def test_p_better_and_decide_on_degenerate_inputs_never_crash_or_crown():
    nan = float("nan")
    assert fit.p_better(3.0, 3.0, 0.0, 1, 1, 0) == 0.0  # floor 0, equal means: not better
    assert 0.0 <= fit.p_better(2.9, 3.0, 0.01, 0, 0, 0) <= 1.0  # n = 0, dof = 0
    for p in (fit.p_better(nan, 3.0, 0.01, 2, 3, 4), fit.p_better(2.9, 3.0, nan, 2, 3, 4),
              fit.p_better(2.9, nan, 0.01, 2, 3, 4)):
        assert all(fit.decide(p, n, 0.95, 5) != "crown" for n in range(1, 8))
    assert fit.decide(0.5, 2, 0.95, 5) == "reeval" and fit.decide(0.5, 5, 0.95, 5) == "drop"
    assert fit.fitness(nan, 0.0) == fit.WORST_FITNESS


def test_a_nan_penalty_is_worst_fitness():
    assert fit.fitness(2.9, fit.penalty(math.inf, 2.9, 0.01, 0.0)) == fit.WORST_FITNESS


def test_a_non_finite_val_does_not_poison_the_noise_floor():
    floor, _ = fit.pooled_noise_floor([[3.0, 3.02], [2.9, 2.91, float("nan")]], 0.002)
    assert math.isfinite(floor)
