"""The live view of a running run (evo/terminal.py): progress, ETA, each slot's state, the last evaluation
and the best, fitting a narrow terminal; plain lines off a terminal. Driven by a synthetic run through the
real reporter (tests/synthetic.py), rendered by rich into string buffers."""
from __future__ import annotations

import io
import re
from pathlib import Path

from synthetic import add_child, fake, finish, new_run

from evo.terminal import Terminal, ellipsize

EVO_TINY = Path(__file__).resolve().parent / "genomes" / "evo_tiny.py"
RATIONALE = ("LEARNING_RATE 0.03 -> 0.06: the loss stops falling after the first few hundred steps, so a larger "
             "step should reach a lower loss within the same budget before the schedule decays it")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watched_run(tmp_path: Path, terminal_factory, **overrides):
    """A synthetic run whose reporter draws on the terminal the test made: the seed's two noise
    evaluations finish 10 s apart in slot cpu0, then a child starts in cpu1."""
    evolution = new_run(tmp_path / "run", EVO_TINY, str(tmp_path / "no-dataset"), evals=20, **overrides)
    terminal = terminal_factory()
    evolution.reporter.terminal = terminal
    for val in (3.00, 3.02):
        row = evolution.next_evaluation()
        evolution.reporter.started("cpu0", row, evolution.journal.genome(row.genome_id))
        if isinstance(terminal.clock, Clock):
            terminal.clock.now += 10
        finish(evolution, row, fake(val=val))
    source = EVO_TINY.read_text().replace("LEARNING_RATE = 0.03", "LEARNING_RATE = 0.06")
    child = add_child(evolution, source, RATIONALE)
    evolution.reporter.started("cpu1", child, evolution.journal.genome(child.genome_id))
    return evolution, terminal, child


def flat(text: str) -> str:
    return " ".join(text.split())


def test_the_live_view_shows_progress_eta_each_slot_the_last_evaluation_and_the_best_in_60_columns(tmp_path):
    clock = Clock()
    evolution, terminal, child = watched_run(tmp_path, lambda: Terminal(file=io.StringIO(), clock=clock,
                                                                        slots=("cpu0", "cpu1")))
    clock.now += 12  # 32 s into the session, the child 12 s into its slot
    text = terminal.render(60)
    lines = text.splitlines()
    assert all(len(line) <= 60 for line in lines), text
    assert re.search(r"evaluations 2/20 .* 10%", lines[0]), text
    # 2 evaluations in 32 s leave 18 for 288 s, but the smoke preset's 0.05 h limit ends in 148 s
    assert "elapsed 0:00:32" in text and "ETA 0:02:28 (the 0.05 h limit)" in flat(text), text
    cpu0 = next(line for line in lines if line.startswith("cpu0"))
    cpu1 = next(line for line in lines if line.startswith("cpu1"))
    assert "idle" in cpu0
    assert child.genome_id in cpu1 and "knob_mutation" in cpu1 and " 12s " in cpu1, text
    assert cpu1.rstrip().endswith("…") and "LEARNING_RATE" in cpu1, "the rationale is cut to the width"
    seed = evolution.state.seed_ids[0]
    assert f"last #2 {seed} noise: val 3.0200 bpb, 20 steps in 1.0 s (20.0 steps/s)" in flat(text), text
    assert f"best {seed} 3.0100 bpb over 2 evaluations (+0.0000 over seed, floor 0.0141)" in flat(text), text

    clock.now += 3
    finish(evolution, child, fake(val=2.90), slot_name="cpu1")
    text = terminal.render(60)
    assert re.search(r"^cpu1 +idle", text, re.MULTILINE) and "evaluations 3/20" in text, text
    assert f"last #3 {child.genome_id} child: val 2.9000 bpb" in flat(text), text
    assert all(len(line) <= 60 for line in text.splitlines()), text
    assert all(len(line) <= 40 for line in terminal.render(40).splitlines())


def test_without_an_hours_limit_the_eta_comes_from_the_evaluation_rate(tmp_path):
    clock = Clock()
    _, terminal, _ = watched_run(tmp_path, lambda: Terminal(file=io.StringIO(), clock=clock), hours=0)
    clock.now += 12
    # 2 evaluations in 32 s: 3.75 a minute, 18 left
    assert "ETA 0:04:48 (at 3.8 evaluations/min)" in flat(terminal.render(80))


def test_off_a_terminal_each_event_is_one_whole_line_and_the_start_line_fits_ending_at_a_word(tmp_path):
    buffer = io.StringIO()
    evolution, terminal, child = watched_run(tmp_path, lambda: Terminal(file=buffer, width=120))
    assert not terminal.live
    finish(evolution, child, fake(val=2.90), slot_name="cpu1")
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 7, "a start and a finished line for each of 3 evaluations, and the noise floor's note"
    assert not any("\x1b[" in line for line in lines), "no terminal codes in a log"
    start = next(line for line in lines if line.startswith(f"  cpu1: start {child.genome_id} knob_mutation: "))
    assert len(start) <= 120, "the start line fits the width"
    shown = start.split("knob_mutation: ", 1)[1]
    assert shown.endswith("…") and RATIONALE.startswith(shown[:-1]) and RATIONALE[len(shown) - 1] == " ", start
    done = next(line for line in lines if line.startswith("[3/20]"))
    # a finished line is never wrapped in a log, so one grep finds all of it
    assert child.genome_id in done and "20 steps in 1.0 s (20.0 steps/s)" in done and " | ETA " in done, done
    assert len(done) > 120 and "best 3.0100 (+0.0000 over seed, floor 0.0141)" in done, done
    assert "noise floor: 0.0141 bpb" in buffer.getvalue()


def test_quiet_prints_nothing(tmp_path):
    buffer = io.StringIO()
    watched_run(tmp_path, lambda: Terminal(quiet=True, file=buffer))
    assert buffer.getvalue() == ""


def test_on_a_terminal_the_live_display_redraws_below_the_finished_lines_and_stops_on_close(tmp_path):
    buffer = io.StringIO()
    evolution, terminal, child = watched_run(tmp_path, lambda: Terminal(file=buffer, live=True, width=70))
    finish(evolution, child, fake(val=2.90), slot_name="cpu1")
    terminal.close()
    out = buffer.getvalue()
    assert "\x1b[" in out, "drawn with terminal codes"
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "\n", out.replace("\r", "\n"))
    assert re.search(r"^\[3/20\] " + child.genome_id, plain, re.MULTILINE), plain
    last_frame = plain[plain.rindex("evaluations 3/20"):]
    assert "cpu1 idle" in flat(last_frame) and f"last #3 {child.genome_id}" in flat(last_frame), last_frame
    size = len(buffer.getvalue())
    terminal.close()  # closing twice is harmless, and nothing redraws after close
    assert len(buffer.getvalue()) == size


def test_ellipsize_cuts_at_a_word_boundary():
    assert ellipsize("short", 10) == "short"
    assert ellipsize("first line\nsecond", 40) == "first line…"
    assert ellipsize("alpha beta gamma delta", 13) == "alpha beta…"
    assert ellipsize("x" * 30, 10) == "x" * 9 + "…"
    assert ellipsize(None, 5) == ""
