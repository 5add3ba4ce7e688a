"""The evolution loop: duplicates are never evaluated, flagged and failed genomes never breed, and an
end-to-end smoke run journals, logs, shows and exports what it did."""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import re
import sqlite3
import subprocess
import sys
import statistics
from pathlib import Path

import pytest

from evo import config as cfg
from evo.genome import Genome
from evo.run import JOURNAL_NAME, harness_seed
from evo.scheduler import Scheduler
from evo.state import MAX_CONTENDED_RERUNS, GenomeRecord, RunState, contended
from gpt.result import SlotResult
from synthetic import fake as result, finish, new_run, replayed_state, resumed

EVO_TINY = Path(__file__).resolve().parent / "genomes" / "evo_tiny.py"
SEED_VALS = (3.00, 3.02)  # the seed's noise evaluations: floor = stdev of the deviations = 0.01414


# ---------------------------------------------------------------- a run with synthetic slot results
def synthetic_run(run_dir: Path, **overrides) -> Scheduler:
    """A run whose evaluations are finished with synthetic results instead of slots (tests/synthetic.py)."""
    return new_run(run_dir, EVO_TINY, str(run_dir / "no-dataset"), **overrides)


def run_noise(evolution: Scheduler, vals=SEED_VALS) -> None:
    for val in vals:
        row = evolution.next_evaluation()
        assert row.purpose == "noise"
        finish(evolution, row, result(val=val))
    assert evolution.state.floor == pytest.approx(statistics.stdev([-0.01, 0.01]))


def population_ids(state: RunState) -> set[str]:
    return {m.genome_id for m in state.population}


# ---------------------------------------------------------------- duplicates
def test_a_child_identical_to_a_known_genome_is_recognized_and_never_evaluated(tmp_path):
    evolution = synthetic_run(tmp_path / "run", gp_share=0.0)  # random knob steps: proposals ignore the study
    run_noise(evolution)
    seed_id = evolution.state.seed_ids[0]
    # the run's second proposal, made earlier with other comments: the same program
    child = evolution.breeder.propose(1)
    assert child is not None and child.parents == (seed_id,)
    earlier = Genome(source="# written earlier, commented differently\n" + child.source.replace("  # evo:", "# evo:"),
                     parents=child.parents, operator=child.operator, rationale="the same edit, made earlier")
    assert earlier.id == child.id and earlier.source != child.source
    first = evolution.next_evaluation()  # proposal 0
    assert first.purpose == "child" and first.genome_id != child.id
    finish(evolution, first, result("failed", None, reason="crash"))  # the population stays the seed alone
    eval_id = evolution.journal.add_genome(earlier, "child", [harness_seed(0, earlier.id, 0)])
    finish(evolution, evolution.journal.evaluation(eval_id), result("failed", None, reason="crash"))

    row = evolution.next_evaluation()  # proposal 1 is the known program: skipped; proposal 2 is queued

    duplicates = evolution.journal.events("duplicate")
    assert [d["genome_id"] for d in duplicates] == [child.id]
    assert row.genome_id not in (child.id, seed_id, first.genome_id)
    assert evolution.journal.count_for(child.id) == 1, "the duplicate was queued again"
    assert evolution.journal.genome(child.id).source == earlier.source
    assert evolution.journal.count_by_state()["queued"] == 1


def test_a_repeated_proposal_is_skipped_and_a_resumed_run_continues_the_proposal_numbers(tmp_path):
    evolution = synthetic_run(tmp_path / "run", gp_share=0.0)  # random knob steps: no study to learn from
    run_noise(evolution)
    # while every child fails the population is the seed alone, so proposal i is a fixed child
    proposals = [evolution.breeder.propose(i) for i in range(60)]
    ids = [child.id if child else None for child in proposals]
    repeat = next(j for j in range(1, 60) if ids[j] is not None and ids[j] in ids[:j])
    evaluated = []
    while not evolution.journal.events("duplicate"):
        row = evolution.next_evaluation()
        evaluated.append(row.genome_id)
        finish(evolution, row, result("failed", None, reason="crash"))
    assert [d["genome_id"] for d in evolution.journal.events("duplicate")] == [ids[repeat]]
    # every new proposal evaluated once, in proposal order; the repeat skipped for the proposal after it
    assert evaluated == [i for i in dict.fromkeys(ids) if i is not None][:len(evaluated)]
    assert ids[repeat] in evaluated[:-1]
    assert evolution.journal.count_for(ids[repeat]) == 1

    again = resumed(tmp_path / "run")  # continues the proposal numbers: the same next child
    assert again.breeder.next_child().id == evolution.breeder.next_child().id
    assert again.breeder.propose(99).id == evolution.breeder.propose(99).id


# ---------------------------------------------------------------- flagged and failed genomes
def _breed(evolution: Scheduler, outcomes: list[dict]) -> list[str]:
    ids = []
    for res in outcomes:
        row = evolution.next_evaluation()
        assert row.purpose == "child"
        finish(evolution, row, res)
        ids.append(row.genome_id)
    return ids


def test_flagged_and_failed_genomes_are_never_chosen_as_parents(tmp_path):
    evolution = synthetic_run(tmp_path / "run", population_size=8, gp_share=0.5, crossover_rate=0.3)
    run_noise(evolution)
    seed_id = evolution.state.seed_ids[0]
    good_a, flagged, failed, good_b, candidate = _breed(evolution, [
        result(val=3.05),
        result("flagged", val=1.0, heldout=1.0, reason="canary: scores planted canaries far better than controls"),
        result("failed", None, reason="crash"),
        result(val=3.04),
        result(val=2.50),  # far better than the seed: a candidate, re-evaluated next ...
    ])
    reeval = evolution.next_evaluation()
    assert (reeval.genome_id, reeval.purpose) == (candidate, "reeval")
    finish(evolution, reeval, result("flagged", val=2.4, reason="stateless: the graph mutates a buffer"))  # ... flagged

    assert population_ids(evolution.state) == {seed_id, good_a, good_b}
    for bad in (flagged, failed, candidate):
        assert evolution.state.records[bad].fitness == -math.inf
    assert evolution.state.records[flagged].flagged.startswith("canary")
    assert evolution.state.records[failed].failed == "crash"
    assert evolution.state.incumbent == seed_id, "a flagged genome became the best"
    assert not evolution.journal.events("new_best")

    parents_seen, crossovers = set(), 0
    for index in range(100, 400):
        child = evolution.breeder.propose(index)
        if child is None:
            continue
        parents_seen.update(child.parents)
        crossovers += len(child.parents) == 2
        assert not {flagged, failed, candidate} & set(child.parents), f"proposal {index}: {child.parents}"
    assert parents_seen == {seed_id, good_a, good_b}  # the tournament does pick every member
    assert crossovers > 0


def test_a_seed_flagged_in_a_noise_evaluation_is_never_made_the_best_nor_a_parent(tmp_path):
    evolution = synthetic_run(tmp_path / "run")
    finish(evolution, evolution.next_evaluation(), result(val=3.0))
    finish(evolution, evolution.next_evaluation(), result("flagged", val=1.0, reason="canary"))
    # the only seed cannot be evolved: the loop stops with this named error (status can still read the run)
    assert evolution.state.seed_failure and re.search("flagged .*canary", evolution.state.seed_failure)
    assert evolution.state.incumbent is None and evolution.state.population == []


def test_with_two_seeds_a_flagged_one_is_left_out_and_the_other_is_evolved(tmp_path):
    evolution = synthetic_run(tmp_path / "run")
    other = Genome(source=EVO_TINY.read_text().replace("WIDTH = 16", "WIDTH = 32"), rationale="second seed")
    evolution.journal.add_genome(other, "noise", [1, 2])
    evolution.state.seed_ids.append(other.id)
    flagged_seed = evolution.state.seed_ids[0]
    outcomes = [result(val=2.0), result("flagged", val=1.9, reason="canary"), result(val=3.0), result(val=3.02)]
    for res in outcomes:
        row = evolution.next_evaluation()
        assert row.purpose == "noise"
        finish(evolution, row, res)
    assert evolution.state.incumbent == other.id
    assert population_ids(evolution.state) == {other.id}
    for index in range(50):
        child = evolution.breeder.propose(index)
        assert child is None or flagged_seed not in child.parents


def test_a_flagged_child_with_an_excellent_score_stays_out_after_a_replay(tmp_path):
    evolution = synthetic_run(tmp_path / "run")
    run_noise(evolution)
    flagged, good = _breed(evolution, [result("flagged", val=0.5, reason="causality"), result(val=3.03)])
    replayed = replayed_state(tmp_path / "run")
    assert population_ids(replayed) == population_ids(evolution.state) == {evolution.state.seed_ids[0], good}
    assert replayed.incumbent == evolution.state.incumbent == evolution.state.seed_ids[0]
    assert replayed.floor == evolution.state.floor
    assert replayed.thresholdout.to_dict() == evolution.state.thresholdout.to_dict()
    for gid, rec in evolution.state.records.items():
        assert (replayed.records[gid].fitness, replayed.records[gid].vals) == (rec.fitness, rec.vals)
    assert replayed.records[flagged].flagged == "causality"


def test_a_confirmed_improvement_becomes_the_best_and_an_unconfirmed_one_does_not(tmp_path):
    evolution = synthetic_run(tmp_path / "run")
    run_noise(evolution)
    (lucky,) = _breed(evolution, [result(val=2.80)])
    reeval = evolution.next_evaluation()
    assert (reeval.genome_id, reeval.purpose) == (lucky, "reeval")
    finish(evolution, reeval, result(val=3.30))  # mean 3.05: within the noise of the seed
    assert evolution.state.incumbent == evolution.state.seed_ids[0]
    assert [e["genome_id"] for e in evolution.journal.events("not_confirmed")] == [lucky]
    better = _breed(evolution, [result(val=2.80)])[0]
    reeval = evolution.next_evaluation()
    finish(evolution, reeval, result(val=2.82))
    assert evolution.state.incumbent == better
    assert [e["genome_id"] for e in evolution.journal.events("new_best")] == [better]


def test_evo_status_lists_flagged_genomes_and_export_refuses_them_without_allow_flagged(tmp_path, evo_cli, capsys):
    from evo.cli import main

    evolution = synthetic_run(tmp_path / "run")
    run_noise(evolution)
    (flagged,) = _breed(evolution, [result("flagged", val=0.5, reason="canary")])
    evolution.journal.close()

    assert main(["status", str(tmp_path / "run")]) == 0
    assert f"flagged: {flagged}: canary" in capsys.readouterr().out

    proc = evo_cli("export", tmp_path / "run", "--genome", flagged[:8], cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "flagged" in proc.stderr and "--allow-flagged" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "export").exists()
    db = sqlite3.connect(tmp_path / "run" / JOURNAL_NAME)
    assert db.execute("SELECT COUNT(*) FROM evaluations WHERE purpose = 'export'").fetchone()[0] == 0


def test_status_and_show_read_a_run_without_operators_llm_clients_openai_or_libcst(tmp_path, evo_cli):
    evolution = synthetic_run(tmp_path / "run")
    run_noise(evolution)
    (child,) = _breed(evolution, [result(val=3.04)])
    evolution.journal.close()
    status = evo_cli("status", tmp_path / "run", cwd=tmp_path, bare=True)
    assert status.returncode == 0, status.stderr
    assert child in status.stdout and "noise floor:" in status.stdout
    show = evo_cli("show", tmp_path / "run", child[:8], cwd=tmp_path, bare=True)
    assert show.returncode == 0, show.stderr
    assert f"genome:    {child}" in show.stdout and f"+++ {child}" in show.stdout
    # the blocker works: importing an operator under it fails
    tests = Path(__file__).resolve().parent
    blocked = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(tests)!r}); import bare_evo; "
                              "bare_evo.install_blocker(); import evo.operators.knobs"], capture_output=True, text=True)
    assert blocked.returncode != 0 and "evo.operators is blocked" in blocked.stderr


def test_the_export_lineage_follows_first_parents_with_their_diffs_even_before_the_noise_floor(tmp_path):
    from evo.export import lineage, lineage_markdown

    evolution = synthetic_run(tmp_path / "run")
    finish(evolution, evolution.next_evaluation(), result(val=3.0))
    assert evolution.state.floor is None  # one of two noise evaluations done
    seed_id = evolution.state.seed_ids[0]
    child = Genome(source=EVO_TINY.read_text().replace("WIDTH = 16", "WIDTH = 32"), parents=(seed_id,),
                   operator="knob_mutation", rationale="WIDTH 16 -> 32")
    grandchild = Genome(source=child.source.replace("SEQ_LEN = 64", "SEQ_LEN = 32"), parents=(child.id, seed_id),
                        operator="knob_crossover", rationale="SEQ_LEN from the other parent")
    evolution.journal.add_genome(child)
    evolution.journal.add_genome(grandchild)
    chain = lineage(evolution.journal, grandchild.id)
    assert chain == [seed_id, child.id, grandchild.id]
    text = lineage_markdown(evolution.directory, evolution.state, chain, SlotResult(status="ok", test_bpb=3.1), None)
    assert f"# Lineage of {grandchild.id}" in text
    assert "Noise floor: not measured yet." in text and "3.1000 bpb" in text
    assert f"## 0. `{seed_id}` (seed)" in text and f"## 2. `{grandchild.id}` (knob_crossover)" in text
    assert "-WIDTH = 16" in text and "+WIDTH = 32" in text and "+SEQ_LEN = 32" in text
    assert "FLAGGED" not in text
    assert "FLAGGED: canary" in lineage_markdown(evolution.directory, evolution.state, chain, SlotResult(status="ok"),
                                                 "canary")


# ---------------------------------------------------------------- end to end: evo run --preset smoke
SMOKE_EVALS = 5   # fewer than the preset's 8, to keep the suite short; still >= population_size (4)
SMOKE_BUDGET = 10  # seconds; evo_steps stops after its fixed steps (~1-5 s), so the budget costs no time
# Startup (importing torch) runs on the slot's kill clock; on a loaded 2-core machine it alone can take
# 6+ s, so a generous grace keeps the default max(10 s, 20%) from killing healthy slots. Fewer tokens
# scored than the preset's 8192 keep each slot short.
SMOKE_TOML = "[slots]\ngrace_s = 60.0\neval_tokens = 2048\n"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, evo_cli, evo_steps, small_source):
    root = tmp_path_factory.mktemp("smoke")
    run_dir = root / "run"
    (root / "grace.toml").write_text(SMOKE_TOML)
    proc = evo_cli("run", "--preset", "smoke", "--config", root / "grace.toml", "--genome", evo_steps,
                   "--data", small_source, "--allow-unsealed", "--budget", SMOKE_BUDGET, "--evals", SMOKE_EVALS, "--hours", 0, "--seed", 1,
                   "--out", run_dir, cwd=root, timeout=500)
    return root, run_dir, proc


@pytest.mark.slow
def test_a_smoke_run_exits_0_and_journals_every_evaluation_with_status_and_scores(smoke_run):
    _, run_dir, proc = smoke_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert re.search(rf"^evaluations:\s+{SMOKE_EVALS}$", proc.stdout, re.M), proc.stdout
    db = sqlite3.connect(run_dir / JOURNAL_NAME)
    db.row_factory = sqlite3.Row
    done = db.execute("SELECT * FROM evaluations WHERE state = 'done' AND purpose != 'export' "
                      "ORDER BY done_seq").fetchall()
    assert len(done) == SMOKE_EVALS
    assert [r["done_seq"] for r in done] == list(range(1, SMOKE_EVALS + 1))
    assert [r["purpose"] for r in done[:2]] == ["noise", "noise"]
    assert {r["purpose"] for r in done} <= {"noise", "child", "reeval", "rerun"}
    assert db.execute("SELECT COUNT(*) FROM evaluations WHERE state = 'running'").fetchone()[0] == 0
    noise_repeats = cfg.PRESETS["smoke"]["noise_repeats"]
    starved: dict[str, int] = {}
    failed_before: set[str] = set()
    starved_by_cpu = collections.Counter(json.loads(d)["genome_id"] for (d,) in db.execute(
        "SELECT data FROM events WHERE kind = 'contended'"))
    for r in done:
        assert r["status"] in ("ok", "failed", "flagged"), dict(r)
        assert json.loads(r["result"])["status"] == r["status"]
        if r["status"] == "ok":
            assert math.isfinite(r["val_bpb"]) and math.isfinite(r["heldout_bpb"]), dict(r)
        else:
            assert r["reason"], dict(r)
        if json.loads(r["result"]).get("contended"):  # a starved slot (a busy machine): run again, not scored,
            starved[r["genome_id"]] = starved.get(r["genome_id"], 0) + 1  # up to MAX_CONTENDED_RERUNS a genome
            if starved[r["genome_id"]] <= MAX_CONTENDED_RERUNS:
                assert r["fitness"] is None, dict(r)
        elif r["status"] == "ok" and r["fitness"] is None and starved_by_cpu[r["genome_id"]] > 0:
            starved_by_cpu[r["genome_id"]] -= 1  # far less CPU than its other evaluations: run again, not scored
        elif r["done_seq"] < noise_repeats:  # scored once the last noise evaluation fixes the floor
            assert r["fitness"] is None and r["answer"] is None, dict(r)
        elif r["status"] == "ok" and r["genome_id"] in failed_before:  # a child that failed once is not trusted
            assert r["fitness"] is None, dict(r)
        elif r["status"] == "ok":
            assert math.isfinite(r["fitness"]) and r["penalty"] >= 0 and r["answer"] is not None, dict(r)
            assert r["revealed"] in (0, 1), dict(r)
        if r["status"] != "ok":
            failed_before.add(r["genome_id"])
    assert sum(r["status"] == "ok" for r in done[:2]) == 2, "the seed must train and score"
    assert any(r["purpose"] == "child" for r in done)
    # the run's resolved config is written next to the journal and reads back the same
    saved = json.loads(db.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()[0])
    config = cfg.resolve(cfg.read_toml(run_dir / "run.toml"))
    assert config.to_dict() == saved
    assert (config.preset, config.budget_s, config.evals, config.grace_s) == ("smoke", SMOKE_BUDGET, SMOKE_EVALS, 60)
    kinds = [k for (k,) in db.execute("SELECT kind FROM events ORDER BY id")]
    assert "noise_floor" in kinds and kinds[-1] == "session_end"


@pytest.mark.slow
def test_a_smoke_run_writes_tensorboard_scalars_readable_by_tensorboard(smoke_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir, proc = smoke_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected = {"eval/val_bpb", "eval/heldout_answer", "eval/penalty", "eval/fitness", "run/best_val_bpb",
                "run/noise_floor", "run/slot_utilization"}
    assert expected <= tags, f"missing {expected - tags}"
    assert {"population/mean_fitness", "population/median_fitness"} <= tags  # evals >= population_size

    db = sqlite3.connect(run_dir / JOURNAL_NAME)
    journal_vals = dict(db.execute("SELECT done_seq, val_bpb FROM evaluations WHERE status = 'ok' "
                                   "AND purpose != 'export'").fetchall())
    logged = {e.step: e.value for e in acc.Scalars("eval/val_bpb")}
    assert logged.keys() == journal_vals.keys()  # step = completion number
    for step, value in logged.items():
        assert value == pytest.approx(journal_vals[step], rel=1e-6)
    floor = json.loads(db.execute("SELECT data FROM events WHERE kind = 'noise_floor'").fetchone()[0])["floor"]
    # the floor the noise repeats fixed comes first; re-evaluations then pool into it (it may move)
    assert acc.Scalars("run/noise_floor")[0].value == pytest.approx(floor, rel=1e-6)
    assert all(e.value > 0 for e in acc.Scalars("run/noise_floor"))
    assert all(0 <= e.value <= 1.05 for e in acc.Scalars("run/slot_utilization"))


@pytest.mark.slow
def test_evo_status_and_evo_show_describe_the_run(smoke_run, evo_cli):
    root, run_dir, proc = smoke_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    db = sqlite3.connect(run_dir / JOURNAL_NAME)
    seed_id = json.loads(db.execute("SELECT value FROM meta WHERE key = 'seeds'").fetchone()[0])[0]
    child_id, operator, rationale = db.execute(
        "SELECT g.id, g.operator, g.rationale FROM genomes g JOIN evaluations e ON e.genome_id = g.id "
        "WHERE e.purpose = 'child' ORDER BY e.id LIMIT 1").fetchone()

    status = evo_cli("status", run_dir, cwd=root)
    assert status.returncode == 0, status.stderr
    assert seed_id in status.stdout
    assert f"evaluations: {SMOKE_EVALS} done of {SMOKE_EVALS}, 0 running" in status.stdout
    assert "noise floor:" in status.stdout and "Thresholdout:" in status.stdout

    show = evo_cli("show", run_dir, child_id[:7], cwd=root)
    assert show.returncode == 0, show.stderr
    assert f"genome:    {child_id}" in show.stdout
    assert f"operator:  {operator}" in show.stdout
    assert f"parents:   {seed_id}" in show.stdout
    assert f"--- {seed_id}" in show.stdout and f"+++ {child_id}" in show.stdout
    knob = rationale.split()[0]  # e.g. "WIDTH 16 -> 32": the diff moves exactly that knob
    assert re.search(rf"^\+{knob} = ", show.stdout, re.M) and re.search(rf"^-{knob} = ", show.stdout, re.M)


@pytest.mark.slow
def test_evo_show_of_the_seed_has_no_parent_and_of_an_unknown_id_is_a_user_error(smoke_run, capsys):
    from evo.cli import main

    _, run_dir, proc = smoke_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    db = sqlite3.connect(run_dir / JOURNAL_NAME)
    seed_id = json.loads(db.execute("SELECT value FROM meta WHERE key = 'seeds'").fetchone()[0])[0]
    assert main(["show", str(run_dir), seed_id]) == 0
    out = capsys.readouterr().out
    assert "parents:   -" in out and "fitness:" in out and "---" not in out
    assert main(["show", str(run_dir), "zzzz"]) == 2
    assert "no genome of this run has an id starting with" in capsys.readouterr().err


@pytest.mark.slow
def test_evo_export_writes_script_and_lineage_and_evo_eval_reproduces_the_journal_score(smoke_run, evo_cli,
                                                                                        small_source):
    root, run_dir, proc = smoke_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    export = evo_cli("export", run_dir, cwd=root, bare=True)  # no operator, LLM client, openai or libcst needed
    assert export.returncode == 0, export.stdout + export.stderr
    fields = dict(re.findall(r"^([a-z_ ]+):\s+(.+)$", export.stdout, re.M))
    gid = fields["genome"].split()[0]
    assert math.isfinite(float(fields["test_bpb"])), export.stdout
    script, lineage = Path(fields["script"]), Path(fields["lineage"])
    assert script == run_dir / "export" / f"{gid}.py" and script.is_file() and lineage.is_file()
    assert Genome(source=script.read_text()).id == gid  # the exported script is the genome's program
    text = lineage.read_text()
    assert f"# Lineage of {gid}" in text and "Test split" in text

    db = sqlite3.connect(run_dir / JOURNAL_NAME)
    row = db.execute("SELECT state, status, test_bpb FROM evaluations WHERE purpose = 'export'").fetchone()
    assert row[0] == "done" and row[2] == pytest.approx(float(fields["test_bpb"]), abs=1e-4)
    assert db.execute("SELECT COUNT(*) FROM evaluations WHERE state = 'done' AND purpose != 'export'"
                      ).fetchone()[0] == SMOKE_EVALS  # the export is not an evaluation of the run
    vals = [v for (v,) in db.execute("SELECT val_bpb FROM evaluations WHERE genome_id = ? AND status = 'ok' "
                                     "AND purpose != 'export'", (gid,))]
    floor = json.loads(db.execute("SELECT data FROM events WHERE kind = 'noise_floor'").fetchone()[0])["floor"]

    for attempt in range(2):  # one retry if a loaded machine ran out the grace
        ev = evo_cli("eval", script, "--run", run_dir, "--device", "cpu", "--out", root / f"eval-export-{attempt}",
                     cwd=root)
        if not re.search(r"^reason:\s+timeout", ev.stdout, re.M):
            break
    assert ev.returncode == 0, ev.stdout + ev.stderr
    val = float(re.search(r"^val_bpb:\s+(\S+)", ev.stdout, re.M).group(1))
    assert abs(val - statistics.fmean(vals)) <= max(4 * floor, 0.5), (val, vals, floor)


@pytest.mark.slow
def test_one_artifact_scores_the_same_through_the_run_evo_eval_export_and_python_exported(smoke_run, evo_cli,
                                                                                          python, data_env):
    """One number, one definition: the run, `evo eval --run`, `evo export` and `python exported.py` score with
    the same dataset and settings, and the same artifact gets the same val_bpb from each to 1e-6."""
    from gpt import score as S
    from gpt.data import Dataset

    root, run_dir, proc = smoke_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    export = evo_cli("export", run_dir, cwd=root)
    assert export.returncode == 0, export.stdout + export.stderr
    script = Path(dict(re.findall(r"^([a-z_ ]+):\s+(.+)$", export.stdout, re.M))["script"])
    db = sqlite3.connect(run_dir / JOURNAL_NAME)
    run_scoring = [json.loads(r)["scoring"] for (r,) in db.execute(
        "SELECT result FROM evaluations WHERE state = 'done' AND status = 'ok' AND purpose != 'export'")]
    export_result = json.loads(db.execute("SELECT result FROM evaluations WHERE purpose = 'export' "
                                          "ORDER BY id DESC LIMIT 1").fetchone()[0])
    ev = evo_cli("eval", script, "--run", run_dir, "--device", "cpu", "--out", root / "same-number", cwd=root)
    assert ev.returncode == 0, ev.stdout + ev.stderr
    eval_result = json.loads((root / "same-number" / "result.json").read_text())
    by_hand = subprocess.run([python, str(script)], capture_output=True, text=True, timeout=300, cwd=root,
                             env={**data_env, "EVO_BUDGET": str(SMOKE_BUDGET)})
    assert by_hand.returncode == 0, by_hand.stdout[-2000:] + by_hand.stderr[-2000:]
    assert "the run's corpus" in by_hand.stderr
    hand_result = json.loads(Path(re.search(r"^details: (.+)$", by_hand.stdout, re.M).group(1)).read_text())
    settings = [run_scoring[0], export_result["scoring"], eval_result["scoring"], hand_result["scoring"]]
    for other in settings:  # the test split is scored at export only: compare the shared settings
        assert {k: v for k, v in other.items() if k != "test_tokens"} == \
               {k: v for k, v in settings[0].items() if k != "test_tokens"}
    assert all(s == run_scoring[0] for s in run_scoring)
    assert settings[0]["eval_tokens"] == 2048  # SMOKE_TOML's, printed with every score
    dataset = json.loads(db.execute("SELECT value FROM meta WHERE key = 'dataset'").fetchone()[0])
    artifact = root / "same-number" / "work"
    scores = [S.score({"artifact": str(artifact), "dataset": dataset, "seq_len": sc["seq_len"],
                       "eval_tokens": sc["eval_tokens"], "device": "cpu", "probe_seed": k}).val_bpb
              for k, sc in enumerate(settings)]
    assert max(scores) - min(scores) <= 1e-6 and abs(scores[0] - eval_result["val_bpb"]) <= 1e-6, scores
    assert Dataset(Path(dataset)).manifest["scored_tokens"]["val"] >= settings[0]["val_tokens"]


# ---------------------------------------------------------------- a noise floor that cannot be poisoned
def test_a_starved_noise_evaluation_is_run_again_not_folded_into_the_floor(tmp_path):
    evolution = synthetic_run(tmp_path / "run")
    starved = dataclasses.replace(result(val=6.68), contended=True, cpu_share=0.05)
    assert evolution.config.noise_repeats == 2
    first = evolution.next_evaluation()
    finish(evolution, first, starved)
    assert evolution.state.floor is None and evolution.state.records[evolution.state.seed_ids[0]].vals == []
    assert [e["genome_id"] for e in evolution.journal.events("contended")] == evolution.state.seed_ids
    row = evolution.next_evaluation()
    finish(evolution, row, result(val=3.00))
    assert evolution.state.floor is None  # the starved one was replaced by a fresh noise evaluation: one more to go
    row = evolution.next_evaluation()
    assert row.purpose == "noise"
    finish(evolution, row, result(val=3.02))
    assert evolution.state.floor == pytest.approx(statistics.stdev([3.00, 3.02]))  # 6.68 never entered it
    replayed, _ = RunState.replay(evolution.config, evolution.journal)
    assert replayed.floor == evolution.state.floor
    assert evolution.journal.count_purpose("noise") == 3  # replaying queued nothing twice


def test_a_candidate_whose_reevaluation_was_starved_is_still_judged_to_the_end(tmp_path):
    """A starved re-evaluation is run again; the re-run must not use up the candidate's next re-evaluation,
    or the sequential rule stops with the candidate neither crowned nor given up (CI, 2026-12-06: values
    4.2892, 4.3836, a starved one, 4.3407, and then nothing queued)."""
    from synthetic import add_child

    evolution = new_run(tmp_path / "run", EVO_TINY, str(tmp_path / "no-dataset"), noise_repeats=3)
    for val in (4.3259, 4.368, 4.3826):
        finish(evolution, evolution.next_evaluation(), result(val=val))
    lucky = add_child(evolution, EVO_TINY.read_text().replace("WIDTH = 16", "WIDTH = 32"), "WIDTH 16 -> 32")
    finish(evolution, lucky, result(val=4.2892), "cpu1")
    gid = lucky.genome_id
    assert evolution.state.records[gid].candidate
    starved = dataclasses.replace(result(val=4.40), contended=True, cpu_share=0.05)
    for outcome in (result(val=4.3836), starved, result(val=4.3407)):
        row = evolution.next_evaluation()
        assert (row.genome_id, row.purpose) == (gid, "reeval")
        finish(evolution, row, outcome, "cpu1")
    rec = evolution.state.records[gid]
    assert rec.vals == [4.2892, 4.3836, 4.3407] and rec.candidate  # 4.40 was starved, not folded in
    queued = evolution.journal.queued()
    assert [(q.genome_id, q.purpose) for q in queued] == [(gid, "reeval")], "the candidate was left undecided"
    _, replayed = RunState.replay(evolution.config, evolution.journal)
    evolution.follow_up(replayed)
    assert len(evolution.journal.queued()) == 1  # a resume re-applies the events and queues nothing twice


def test_an_evaluation_with_far_less_cpu_than_the_genomes_others_is_contended():
    rec = GenomeRecord(cpu_seconds=[20.0, 21.0, 19.0])
    assert contended(rec, SlotResult(status="ok", cpu_seconds=6.0))
    assert not contended(rec, SlotResult(status="ok", cpu_seconds=18.0))
    assert not contended(GenomeRecord(cpu_seconds=[20.0]), SlotResult(status="ok", cpu_seconds=1.0))  # nothing to compare


def test_the_floor_pools_every_genomes_repeats_and_tightens_with_them(tmp_path):
    from evo.fitness import pooled_noise_floor

    floor, dof = pooled_noise_floor([[3.00, 3.02], [2.90, 2.91, 2.92], [2.5]])
    assert dof == 3 and floor == pytest.approx(((0.0002 + 0.0002) / 3) ** 0.5)
    evolution = synthetic_run(tmp_path / "run")
    run_noise(evolution)
    assert evolution.state.floor_dof == 1
    (child,) = _breed(evolution, [result(val=2.70)])
    reeval = evolution.next_evaluation()
    finish(evolution, reeval, result(val=2.71))
    assert evolution.state.floor_dof == 1  # a candidate's first value chose it: only evaluations after it count


def test_a_floor_larger_than_the_spread_of_the_children_is_a_warning(tmp_path):
    evolution = synthetic_run(tmp_path / "run")
    run_noise(evolution, vals=(3.00, 3.02))
    evolution.state.floor = 0.5  # as if a poisoned noise evaluation had inflated it
    _breed(evolution, [result(val=3.0 + 0.001 * k) for k in range(6)])
    events = evolution.journal.events("implausible_floor")
    assert len(events) == 1 and events[0]["floor"] == 0.5
