"""The run journal: one SQLite file in WAL mode; atomic, never-twice results; crash-safe state."""
from __future__ import annotations

from dataclasses import replace
import sqlite3
import subprocess
import sys
import threading

import pytest

from evo.genome import Genome
from evo.journal import Journal
from gpt.errors import UserError
from gpt.result import SlotResult

SOURCE = '''"""A genome."""
import math

WIDTH = 64  # evo: choice(32, 64)
LEARNING_RATE = 3e-3


def scale(x):
    return x * math.sqrt(WIDTH) * LEARNING_RATE
'''
# the same program: other formatting, other comments, another docstring-free layout of the same AST
REFORMATTED = '''"""A genome."""
import math
# a new comment
WIDTH   =   64
LEARNING_RATE = 0.003


def scale( x ):
    # comments are not code
    return x*math.sqrt(WIDTH)*LEARNING_RATE
'''
DIFFERENT = SOURCE.replace("WIDTH = 64", "WIDTH = 32")

RESULT_FIELDS = {"status": "ok", "reason": None, "val_bpb": 2.5, "heldout_bpb": 2.52, "test_bpb": None,
                 "train_seconds": 1.5, "slot_seconds": 3.0, "eval_seconds": 0.4, "sandbox": "none", "steps": 12}
RESULT = SlotResult(**RESULT_FIELDS)
SCORES = {"answer": 2.5, "revealed": 0, "penalty": 0.0, "fitness": -2.5}


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "journal.sqlite")
    yield j
    j.close()


def _queued(journal: Journal, source: str = SOURCE, seeds=(11,)) -> list[int]:
    genome = Genome(source=source)
    first = journal.add_genome(genome, "noise", seeds)
    return list(range(first, first + len(seeds)))


def test_the_journal_is_a_sqlite_file_in_wal_mode(journal):
    other = sqlite3.connect(journal.path)
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other.close()
    assert journal.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: a commit survives power loss


def test_a_genome_is_stored_with_its_source_and_provenance(journal):
    parent = Genome(source=SOURCE)
    child = Genome(source=DIFFERENT, parents=(parent.id,), operator="knob_mutation", rationale="WIDTH 64 -> 32")
    assert journal.add_genome(parent) == 0  # no purpose: recorded, nothing queued
    journal.add_genome(child)
    stored = journal.genome(child.id)
    assert stored.source == DIFFERENT
    assert stored.parents == (parent.id,)
    assert (stored.operator, stored.rationale) == ("knob_mutation", "WIDTH 64 -> 32")
    assert stored.id == child.id
    assert journal.genome_ids() == [parent.id, child.id]
    assert len(journal.all_evaluations()) == 0


def test_an_identical_program_is_recognized_despite_formatting_and_comments(journal):
    first = journal.add_genome(Genome(source=SOURCE), "child", [1])
    assert first is not None
    assert Genome(source=REFORMATTED).id == Genome(source=SOURCE).id
    assert journal.add_genome(Genome(source=REFORMATTED, operator="knob_mutation"), "child", [2]) is None
    assert journal.add_genome(Genome(source=SOURCE), "child", [3]) is None
    assert len(journal.all_evaluations()) == 1, "a duplicate queued an evaluation"
    assert journal.genome(Genome(source=SOURCE).id).source == SOURCE  # the first text is kept
    assert journal.genome(Genome(source=SOURCE).id).operator == "seed"


def test_a_changed_constant_is_a_new_genome(journal):
    assert journal.add_genome(Genome(source=SOURCE), "child", [1]) is not None
    assert journal.add_genome(Genome(source=DIFFERENT), "child", [1]) is not None
    assert len(journal.genome_ids()) == 2


def test_add_genome_queues_one_evaluation_per_seed_in_the_same_transaction(journal):
    genome = Genome(source=SOURCE)
    first = journal.add_genome(genome, "noise", [5, 6, 7])
    rows = journal.all_evaluations()
    assert [r.id for r in rows][0] == first
    assert [(r.genome_id, r.purpose, r.seed, r.state) for r in rows] == \
        [(genome.id, "noise", s, "queued") for s in (5, 6, 7)]
    assert [r.id for r in journal.queued()] == [r.id for r in rows]


def test_finish_evaluation_numbers_completions_and_never_counts_one_twice(journal):
    a, b = _queued(journal, seeds=(1, 2))
    journal.mark_running(b, "cpu0")
    assert journal.finish_evaluation(b, RESULT, SCORES) == 1
    assert journal.finish_evaluation(a, replace(RESULT, val_bpb=2.7), SCORES) == 2
    assert journal.finish_evaluation(b, replace(RESULT, val_bpb=9.9), {"fitness": -9.9}) is None
    row = journal.evaluation(b)
    assert (row.state, row.done_seq, row.result.val_bpb, row.fitness) == ("done", 1, 2.5, -2.5)
    assert row.result == RESULT
    assert journal.count_done() == 2
    assert journal.finish_evaluation(12345, RESULT, SCORES) is None  # no such evaluation


def test_finish_evaluation_stores_result_scores_and_event_together_or_not_at_all(journal):
    (eval_id,) = _queued(journal)
    journal.mark_running(eval_id, "cpu0")
    with pytest.raises(TypeError):  # the event cannot be written: the whole transaction rolls back
        journal.finish_evaluation(eval_id, RESULT, SCORES, events=[("new_best", {"bad": object()})])
    row = journal.evaluation(eval_id)
    assert (row.state, row.done_seq, row.result) == ("running", None, None)
    assert journal.events() == []
    assert journal.finish_evaluation(eval_id, RESULT, SCORES, events=[("new_best", {"genome_id": "x"})]) == 1
    assert [e["kind"] for e in journal.events()] == ["new_best"]


def test_two_controllers_finishing_the_same_evaluation_count_it_once(tmp_path):
    path = tmp_path / "journal.sqlite"
    setup = Journal(path)
    ids = _queued(setup, seeds=tuple(range(20)))
    journals = [Journal(path), Journal(path)]  # two connections: real SQLite locking between them
    seqs: list[list] = [[], []]
    barrier = threading.Barrier(2)

    def finish(k):
        barrier.wait()
        for eval_id in ids:
            seqs[k].append(journals[k].finish_evaluation(eval_id, replace(RESULT, val_bpb=float(k)), SCORES))

    threads = [threading.Thread(target=finish, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for eval_id, a, b in zip(ids, *seqs):
        assert (a is None) != (b is None), f"evaluation {eval_id} counted {'twice' if a and b else 'never'}"
    done = [s for s in seqs[0] + seqs[1] if s is not None]
    assert sorted(done) == list(range(1, len(ids) + 1))
    assert setup.count_done() == len(ids)
    for j in journals + [setup]:
        j.close()


def test_mark_running_counts_attempts(journal):
    (eval_id,) = _queued(journal)
    assert journal.mark_running(eval_id, "cpu0") == 1
    journal.requeue_running()
    assert journal.mark_running(eval_id, "cpu1") == 2
    row = journal.evaluation(eval_id)
    assert (row.state, row.slot, row.attempt) == ("running", "cpu1", 2)


def test_requeue_running_puts_running_evaluations_back_in_the_queue(journal):
    a, b, c, d = _queued(journal, seeds=(1, 2, 3, 4))
    journal.mark_running(a, "cpu0")
    journal.mark_running(b, "cpu1")
    journal.mark_running(c, "cpu2")
    journal.finish_evaluation(c, RESULT, SCORES)
    assert sorted(journal.requeue_running()) == [a, b]
    states = {r.id: r.state for r in journal.all_evaluations()}
    assert states == {a: "queued", b: "queued", c: "done", d: "queued"}
    assert [r.id for r in journal.queued()] == [a, b, d]
    assert journal.requeue_running() == []


def test_export_evaluations_never_enter_the_queue_of_the_run(journal):
    genome = Genome(source=SOURCE)
    journal.add_genome(genome, "noise", [1])
    export_id = journal.queue_evaluation(genome.id, "export", 99)
    assert export_id not in [r.id for r in journal.queued()]
    journal.mark_running(export_id, "export")
    journal.finish_evaluation(export_id, replace(RESULT, test_bpb=2.6), {})
    assert journal.done_evaluations() == []  # noise/child/reeval only
    assert journal.evaluation(export_id).state == "done" and journal.count_done() == 0


def test_done_evaluations_come_back_in_completion_order(journal):
    ids = _queued(journal, seeds=(1, 2, 3))
    for eval_id in reversed(ids):
        journal.finish_evaluation(eval_id, RESULT, SCORES)
    assert [r.id for r in journal.done_evaluations()] == list(reversed(ids))
    assert [r.done_seq for r in journal.done_evaluations()] == [1, 2, 3]


def test_llm_totals_sum_calls_tokens_and_cost(journal):
    assert journal.llm_totals() == {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0}
    journal.record_llm_call({"call_id": "a", "model": "m1", "status": "ok", "prompt_tokens": 1000,
                             "completion_tokens": 200, "cost_usd": 0.006})
    journal.record_llm_call({"call_id": "b", "model": "m2", "status": "ok", "prompt_tokens": 500,
                             "completion_tokens": 50, "cost_usd": 0.00225})
    journal.record_llm_call({"call_id": "c", "model": "m1", "status": "timeout", "prompt_tokens": None,
                             "completion_tokens": None, "cost_usd": None})
    totals = journal.llm_totals()
    assert totals["calls"] == 3
    assert (totals["prompt_tokens"], totals["completion_tokens"]) == (1500, 250)
    assert totals["cost_usd"] == pytest.approx(0.00825)


def test_events_and_memory_notes_are_kept_in_order(journal):
    journal.event("noise_floor", floor=0.01)
    journal.event("duplicate", genome_id="abc")
    journal.event("noise_floor", floor=0.02)
    assert [e["floor"] for e in journal.events("noise_floor")] == [0.01, 0.02]
    assert [e["kind"] for e in journal.events()] == ["noise_floor", "duplicate", "noise_floor"]
    assert journal.latest_memory() is None
    journal.add_memory("first note")
    journal.add_memory("second note")
    assert journal.latest_memory() == "second note"


def test_genome_ids_are_found_by_a_unique_prefix_and_unknown_ones_are_user_errors(journal):
    a, b = Genome(source=SOURCE), Genome(source=DIFFERENT)
    journal.add_genome(a)
    journal.add_genome(b)
    assert journal.find_genome(a.id[:8]) == a.id
    with pytest.raises(UserError, match="matches 2 genomes"):
        journal.find_genome("")
    with pytest.raises(UserError, match="no genome of this run has an id starting with"):
        journal.find_genome("zzz")
    with pytest.raises(UserError, match="evo status"):
        journal.genome("000000000000")


def test_everything_persists_across_close_and_reopen(tmp_path):
    path = tmp_path / "journal.sqlite"
    j = Journal(path)
    j.set_meta("config", {"evals": 8, "genomes": ["a.py"]})
    (eval_id,) = _queued(j)
    j.mark_running(eval_id, "cpu0")
    j.finish_evaluation(eval_id, RESULT, SCORES)
    j.event("new_best", genome_id="x")
    j.record_llm_call({"prompt_tokens": 3, "completion_tokens": 4, "cost_usd": 0.5})
    j.add_memory("note")
    j.close()

    again = Journal(path)
    assert again.get_meta("config") == {"evals": 8, "genomes": ["a.py"]}
    assert again.get_meta("missing", "default") == "default"
    assert again.genome(Genome(source=SOURCE).id).source == SOURCE
    row = again.evaluation(eval_id)
    assert (row.state, row.done_seq, row.result.val_bpb, row.fitness) == ("done", 1, 2.5, -2.5)
    assert [e["kind"] for e in again.events()] == ["new_best"]
    assert again.llm_totals()["cost_usd"] == 0.5
    assert again.latest_memory() == "note"
    assert again.finish_evaluation(eval_id, RESULT, SCORES) is None  # still counted once after a reopen
    again.close()


def test_a_writer_killed_without_closing_loses_nothing_it_committed(tmp_path):
    path = tmp_path / "journal.sqlite"
    script = f"""
import os
from evo.genome import Genome
from evo.journal import Journal
from gpt.result import SlotResult
j = Journal({str(path)!r})
eval_id = j.add_genome(Genome(source={SOURCE!r}), "noise", [1, 2])
j.mark_running(eval_id, "cpu0")
j.finish_evaluation(eval_id, SlotResult(**{RESULT_FIELDS!r}), {SCORES!r})
j.mark_running(eval_id + 1, "cpu0")
j.db.execute("BEGIN IMMEDIATE")  # a transaction in flight when the process dies
j.db.execute("UPDATE evaluations SET state = 'done', done_seq = 99 WHERE id = ?", (eval_id + 1,))
os._exit(0)
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    j = Journal(path)
    rows = j.all_evaluations()
    assert [(r.state, r.done_seq) for r in rows] == [("done", 1), ("running", None)]
    assert j.requeue_running() == [rows[1].id]
    j.close()


def test_a_transaction_that_cannot_begin_leaves_the_journal_usable_from_other_threads(tmp_path):
    path = tmp_path / "journal.sqlite"
    journal = Journal(path)
    journal.db.execute("PRAGMA busy_timeout = 50")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        journal.event("blocked")
    blocker.execute("ROLLBACK")
    blocker.close()

    done = threading.Event()

    def write_from_another_thread():
        journal.event("after")
        done.set()

    threading.Thread(target=write_from_another_thread, daemon=True).start()
    assert done.wait(10), "the journal's lock was left held by the failed transaction"
    assert [e["kind"] for e in journal.events()] == ["after"]
    journal.close()
