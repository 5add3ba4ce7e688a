"""The typed knob space, structures, and the model-based knob operators (TPE, GP, CMA-ES): proposals stay
inside the space and away from failures, and a resumed run proposes exactly what an uninterrupted one
does, because each study is rebuilt from the journal."""
import math
import random
import shutil
from pathlib import Path

import pytest

from evo.genome import OperatorContext, OperatorFailure, ParentInfo, Genome
from evo.operators.space import knob_space, structure_id, write_values
from evo.operators.studies import (CMAESSearch, GPSearch, Study, TPESearch, Trial, cma_summary, propose_cmaes,
                                  propose_gp, propose_tpe,
                                   study_text)
from tests.synthetic import fake, finish, new_run, resumed

ROOT = Path(__file__).resolve().parent.parent
TINY = (ROOT / "genomes" / "tiny_cpu.py").read_text()

ANNOTATED = '''
LR = 3e-3  # evo: log(1e-4, 1e-1)
DROP = 0.1  # evo: range(0.0, 0.5)
DEPTH = 4  # evo: range(1, 12)
WIDTH = 128  # evo: pow2(32, 1024)
ACT = "relu"  # evo: choice("relu", "gelu")
BIAS = False
EPS = 1e-8
BATCH = 16
LAYERS = 3
OFFSET = -0.5
NAME = "x"
ZERO = 0.0
PINNED = 2  # evo: range(2, 2)
'''


def test_each_annotation_and_unannotated_kind_becomes_its_dimension():
    space, values = knob_space(ANNOTATED)
    dims = {d.name: d for d in space.dimensions}
    assert (dims["LR"].kind, dims["LR"].low, dims["LR"].high) == ("log", 1e-4, 1e-1)
    assert (dims["DROP"].kind, dims["DEPTH"].kind, dims["WIDTH"].kind) == ("float", "int", "pow2")
    assert dims["ACT"].choices == ("relu", "gelu") and dims["BIAS"].choices == (False, True)
    assert (dims["EPS"].kind, dims["EPS"].low, dims["EPS"].high) == ("log", pytest.approx(1e-9), pytest.approx(1e-7))
    assert (dims["BATCH"].kind, dims["BATCH"].low, dims["BATCH"].high) == ("pow2", 4, 64)
    assert (dims["LAYERS"].kind, dims["LAYERS"].low, dims["LAYERS"].high) == ("int", 1, 6)
    assert not {"OFFSET", "NAME", "ZERO", "PINNED"} & set(dims)  # fixed: annotate them to search them
    assert values["WIDTH"] == 128 and values["ACT"] == "relu"


def test_values_map_to_the_unit_interval_and_back_typed_and_inside_the_bounds():
    space, values = knob_space(ANNOTATED)
    assert space.from_unit(space.to_unit(values)) == values
    rng = random.Random(0)
    for _ in range(200):
        point = [rng.uniform(-0.2, 1.2) for _ in space.dimensions]
        drawn = space.from_unit(point)
        assert math.log2(drawn["WIDTH"]).is_integer() and 32 <= drawn["WIDTH"] <= 1024
        assert isinstance(drawn["DEPTH"], int) and 1 <= drawn["DEPTH"] <= 12
        assert 1e-4 <= drawn["LR"] <= 1e-1 and drawn["ACT"] in ("relu", "gelu")
        assert space.from_params(space.to_params(drawn)) == drawn


def test_genomes_that_differ_only_in_knob_values_share_a_structure_and_a_code_edit_does_not():
    space, values = knob_space(TINY)
    moved, changes = write_values(TINY, {**values, "WIDTH": 256, "LEARNING_RATE": 0.005})
    assert {c[0] for c in changes} == {"WIDTH", "LEARNING_RATE"}
    assert knob_space(moved)[1]["WIDTH"] == 256
    assert structure_id(moved) == structure_id(TINY)
    edited = TINY.replace("F.relu(self.up(rms_norm(x))).square()", "F.gelu(self.up(rms_norm(x)))")
    assert edited != TINY and structure_id(edited) != structure_id(TINY)


def test_an_unknown_knob_in_a_proposal_is_refused_with_the_names_of_the_real_ones():
    space, _ = knob_space(TINY)
    with pytest.raises(ValueError, match="not knobs of this genome: DROPOUT.*LEARNING_RATE"):
        space.check({"DROPOUT": 0.1})
    assert space.check({"WIDTH": 300})["WIDTH"] == 256  # snapped to a power of two inside the bounds


def _landscape(values) -> float:
    """A smooth made-up bpb: best at LEARNING_RATE 0.01, WIDTH 256, WARMDOWN 0.6."""
    return (2.0 + (math.log10(values["LEARNING_RATE"]) + 2) ** 2 + 0.1 * (math.log2(values["WIDTH"]) - 8) ** 2
            + (values["WARMDOWN_FRACTION"] - 0.6) ** 2)


def _study(n: int, seed: int = 0, failures: int = 0) -> Study:
    space, own = knob_space(TINY)
    rng = random.Random(seed)
    trials = [Trial("seed", own, _landscape(own), 3, val_mean=_landscape(own))]
    for k in range(n - 1):
        values = space.from_unit([rng.random() for _ in space.dimensions])
        failed = k < failures
        trials.append(Trial(f"g{k}", values, None if failed else _landscape(values), 1,
                            failure="out of memory" if failed else None,
                            val_mean=None if failed else _landscape(values)))
    return Study("s", space, tuple(trials), noise_floor=0.05)


@pytest.mark.parametrize("propose", [propose_tpe, propose_gp, propose_cmaes])
def test_model_based_proposals_are_typed_inside_the_space_new_and_the_same_for_the_same_stream(propose):
    study = _study(30)
    space = study.space
    for seed in range(5):
        values = propose(study, random.Random(seed))
        assert values == propose(study, random.Random(seed))
        assert space.check(values) == values and not study.seen(values)
    if propose is not propose_gp:  # GP BO maximizes its acquisition: other streams may find the same optimum
        assert propose(study, random.Random(1)) != propose(study, random.Random(2))


@pytest.mark.parametrize("propose", [propose_tpe, propose_gp])
def test_the_optuna_samplers_find_a_better_configuration_than_random_search_on_a_smooth_landscape(propose):
    def search(propose, budget=25, seed=0):
        study = _study(1)
        rng = random.Random(seed)
        for k in range(budget):
            values = propose(study, rng)
            study = Study("s", study.space, study.trials + (Trial(f"c{k}", values, _landscape(values)),), 0.05)
        return min(t.score for t in study.trials)

    def random_search(study, rng):
        return study.space.from_unit([rng.random() for _ in study.space.dimensions])

    model = sorted(search(propose, seed=s) for s in range(3))[1]  # medians of 3 searches
    rand = sorted(search(random_search, seed=s) for s in range(3))[1]
    assert model < rand, (model, rand)


@pytest.mark.parametrize("propose", [propose_tpe, propose_gp, propose_cmaes])
def test_no_proposal_lands_next_to_a_configuration_that_failed(propose):
    study = _study(30, failures=10)
    for seed in range(10):
        values = propose(study, random.Random(seed))
        assert not study.near_failure(values)


def test_the_operators_write_a_child_of_the_parent_with_the_changes_as_rationale():
    study = _study(12)
    parent = ParentInfo(genome=Genome(source=TINY))
    for op in (TPESearch(), GPSearch(), CMAESSearch()):
        child = op([parent], random.Random(3), OperatorContext(study=study))
        assert child.parents == (parent.genome.id,) and child.operator == op.name
        assert structure_id(child.source) == structure_id(TINY) and " -> " in child.rationale
    with pytest.raises(OperatorFailure, match="no knob study"):
        TPESearch()([parent], random.Random(3), OperatorContext())


def test_the_study_text_shows_the_space_the_best_with_intervals_the_last_trials_and_cma_state():
    study = _study(15, failures=2)
    text = study_text(study, last=20)
    assert "space: DEPTH: 1 .. 8 (integers)" in text and "LEARNING_RATE: 0.0001 .. 0.03 (log scale)" in text
    assert "best: val_bpb " in text and " +- " in text and "failed: out of memory" in text
    assert "CMA-ES mean after 1 update(s)" in text and "CMA-ES step per knob" in text
    assert cma_summary(study)["updates"] == 1  # 15 trials, population 11: one update


def _bpb_of(evolution, row) -> float:
    """The made-up landscape of the row's genome (fake results: no training)."""
    return _landscape(knob_space(evolution.journal.genome(row.genome_id).source)[1])


def _drive(evolution, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        row = evolution.next_evaluation()
        finish(evolution, row, fake(val=_bpb_of(evolution, row)))
        ids.append(f"{row.purpose}:{row.genome_id}:{evolution.journal.genome(row.genome_id).operator}")
    return ids


@pytest.mark.parametrize("shares", [{"gp_share": 0.0, "tpe_share": 1.0, "crossover_rate": 0.0},
                                    {"gp_share": 1.0, "tpe_share": 0.0, "crossover_rate": 0.0},
                                    {"gp_share": 0.0, "cmaes_share": 1.0, "tpe_share": 0.0, "crossover_rate": 0.0}])
def test_a_resumed_run_proposes_exactly_what_the_uninterrupted_run_does(tmp_path, shares):
    evolution = new_run(tmp_path / "a", ROOT / "genomes" / "tiny_cpu.py", noise_repeats=2, population_size=6,
                        evals=0, **shares)
    first = _drive(evolution, 10)
    assert sum(":tpe" in i or ":gp" in i or ":cmaes" in i for i in first) >= 6
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    uninterrupted = _drive(evolution, 8)
    again = _drive(resumed(tmp_path / "b"), 8)
    assert again == uninterrupted


def test_local_steps_read_their_step_size_when_they_step(monkeypatch):
    """scripts/bench_search.py --set measures other step sizes by replacing LOCAL_SIGMA: a default bound at
    import would ignore it (it did once, and a measurement came out identical to the default's)."""
    from evo.operators import studies

    study = _study(1)  # the seed alone: every step is centred on it
    seed_unit = study.space.to_unit(study.trials[0].values)
    monkeypatch.setattr(studies, "LOCAL_SIGMA", 1e-12)
    with pytest.raises(OperatorFailure, match="every local step landed on a known configuration"):
        studies.local_step(study, random.Random(0))
    monkeypatch.setattr(studies, "LOCAL_SIGMA", 0.3)
    far = studies.local_step(study, random.Random(0))
    assert max(abs(a - b) for a, b in zip(study.space.to_unit(far), seed_unit)) > 0.05


def test_with_two_slots_the_next_knob_child_is_proposed_while_the_slots_train(tmp_path):
    """A freed slot does not wait for a model-based ask: with several slots the breeder has the next child
    ready, made in the background from the state as it stood, while the scheduler folds results."""
    from evo.breeding import Breeder

    evolution = new_run(tmp_path / "a", ROOT / "genomes" / "tiny_cpu.py", noise_repeats=2, population_size=6,
                        evals=0, gp_share=1.0, tpe_share=0.0, crossover_rate=0.0)
    assert evolution.breeder.executor is None  # one slot: each child from every result so far
    evolution.breeder = Breeder(evolution.state, evolution.journal, tmp_path / "a", n_slots=2)
    try:
        _drive(evolution, 2)  # the seed's noise evaluations
        made = []
        for _ in range(12):
            row = evolution.next_evaluation()
            assert row.purpose == "child" or made, row.purpose
            if row.purpose == "child":
                dropped = {e["genome_id"] for e in evolution.journal.events("duplicate")}
                assert not made or made[-1] is None or made[-1].id in (row.genome_id, *dropped)  # made ahead, started
                ahead = evolution.breeder.proposals
                assert len(ahead) == 1
                made.append(ahead[0].result(timeout=120))  # finished with no call from the loop
            finish(evolution, row, fake(val=_bpb_of(evolution, row)))
        assert len(made) >= 6 and evolution.journal.events("operator_failure") == []
    finally:
        evolution.breeder.close()
