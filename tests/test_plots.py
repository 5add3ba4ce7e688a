"""The progress picture (every finished evaluation by kind, the best as a staircase, the noise band,
wall time on a second axis), the reporter keeping RUN_DIR/progress.png current, and the lineage picture
of an exported genome: drawn with real matplotlib from runs driven through the scheduler."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import matplotlib.image
import matplotlib.text
import pytest

from evo import plots
from evo.export import lineage, write_pictures
from evo.genome import Genome
from evo.reporter import Reporter
from evo.scheduler import Scheduler
from synthetic import add_child, fake, finish, new_run

TESTS = Path(__file__).resolve().parent
EVO_TINY = TESTS / "genomes" / "evo_tiny.py"
SOURCE = EVO_TINY.read_text()
# What every_kind_run's evaluations are, in completion order (population_size 3):
KINDS = {"noise": [1, 2], "discarded": [3, 8], "flagged": [4], "failed": [5], "kept": [6, 9], "crowned": [7],
         "re-evaluation": [10]}


def _child(run: Scheduler, old: str, new: str, result, why: str) -> str:
    row = add_child(run, SOURCE.replace(old, new), why)
    finish(run, row, result)
    return row.genome_id


def _reeval(run: Scheduler, genome_id: str, result) -> None:
    row = run.next_evaluation()
    assert (row.genome_id, row.purpose) == (genome_id, "reeval")
    finish(run, row, result)


def every_kind_run(run_dir: Path, watched: bool = False) -> tuple[Scheduler, dict]:
    """A run with one evaluation of each kind at least (see KINDS). `watched`: its reporter is given the
    Run, as the scheduler's will be, so it draws the progress picture and logs it to TensorBoard."""
    run = new_run(run_dir, EVO_TINY, str(run_dir / "no-dataset"), population_size=3)
    if watched:
        run.reporter.close()
        run.reporter = Reporter(run_dir, quiet=True, run=run.directory)
    for val in (3.00, 3.02):  # noise: seed mean 3.01, floor 0.0141
        finish(run, run.next_evaluation(), fake(val=val))
    ids = {"worse": _child(run, "WIDTH = 16", "WIDTH = 8", fake(val=3.05), "narrower"),  # pushed out later
           "flagged": _child(run, "WIDTH = 16", "WIDTH = 32", fake("flagged", val=1.0, reason="canary"), "wider"),
           "failed": _child(run, "SEQ_LEN = 64", "SEQ_LEN = 32", fake("failed", None, reason="crash"), "shorter")}
    ids["best"] = _child(run, "LEARNING_RATE = 0.03", "LEARNING_RATE = 0.05", fake(val=2.80), "faster")
    _reeval(run, ids["best"], fake(val=2.82))  # confirmed: the crowning evaluation
    ids["bad"] = _child(run, "BATCH_SIZE = 16", "BATCH_SIZE = 8", fake(val=3.50), "smaller batches")
    ids["lucky"] = _child(run, "BATCH_SIZE = 16", "BATCH_SIZE = 32", fake(val=2.70), "larger batches")
    _reeval(run, ids["lucky"], fake(val=3.30))  # not confirmed
    assert run.state.incumbent == ids["best"]
    assert {m.genome_id for m in run.state.population} == {run.state.seed_ids[0], ids["best"], ids["lucky"]}
    return run, ids


def _title(fig) -> str:
    (title,) = [t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_gid() == "title"]
    return title


def _collections(fig) -> dict:
    return {c.get_gid(): c for c in fig.axes[0].collections if c.get_gid()}


def test_the_progress_picture_draws_every_kind_of_evaluation_the_best_and_the_noise_band(tmp_path):
    run, ids = every_kind_run(tmp_path / "run")
    path = plots.draw_progress(run.directory, run.state, tmp_path / "progress.png")
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (600, 1100)  # PROGRESS_SIZE at DPI

    fig = plots.progress_figure(run.directory, run.state)
    ax = fig.axes[0]
    dots = _collections(fig)
    assert set(dots) == set(KINDS)
    for kind, seqs in KINDS.items():
        assert sorted(x for x, _ in dots[kind].get_offsets()) == seqs, kind
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    for kind, seqs in KINDS.items():
        assert f"{kind} ({len(seqs)})" in labels
    assert "seed mean 3.0100" in labels and "± noise floor 0.0141" in labels
    (band,) = [p for p in ax.patches if p.get_gid() == "noise_band"]
    floor = run.state.floor
    box = band.get_window_extent().transformed(ax.transData.inverted())  # a Rectangle or a Polygon, by version
    assert (box.y0, box.y1) == pytest.approx((3.01 - floor, 3.01 + floor))
    assert list(dots["crowned"].get_offsets()[0]) == pytest.approx([7, 2.82])
    # flagged and failed have no trustworthy val_bpb: they sit on the bottom edge (axes coordinates)
    for kind in ("flagged", "failed"):
        assert dots[kind].get_offsets()[0][1] == pytest.approx(plots.EDGE_Y)
        assert dots[kind].get_transform() != ax.transData
    (best,) = [line for line in ax.get_lines() if line.get_gid() == "best"]
    assert list(best.get_xdata()) == [2, 7, 10]  # from the noise floor on, down at the crowning, to the end
    assert list(best.get_ydata()) == pytest.approx([3.01, 2.81, 2.81])
    assert any("wall time" in child.get_xlabel() for child in ax.child_axes)
    title = _title(fig)
    assert title.startswith("run: best 2.8100 bpb") and ids["best"] in title and "+0.2000 bpb over the seed" in title


def test_a_child_far_worse_than_the_seed_is_drawn_on_the_top_edge_not_off_the_picture(tmp_path):
    run, _ = every_kind_run(tmp_path / "run")
    _child(run, "WEIGHT_DECAY = 0.0", "WEIGHT_DECAY = 0.1", fake(val=9.0), "diverges")
    fig = plots.progress_figure(run.directory, run.state)
    bottom, top = fig.axes[0].get_ylim()
    assert top < 4.0  # the rest is not flattened by one outlier
    assert max(y for _, y in _collections(fig)["discarded"].get_offsets()) <= top


def test_before_the_noise_floor_the_picture_has_dots_but_no_best(tmp_path):
    run = new_run(tmp_path / "run", EVO_TINY, "", population_size=3)
    finish(run, run.next_evaluation(), fake(val=3.0))
    fig = plots.progress_figure(run.directory, run.state)
    assert "noise floor not measured yet" in _title(fig)
    assert not [line for line in fig.axes[0].get_lines() if line.get_gid() == "best"]
    assert len(_collections(fig)["noise"].get_offsets()) == 1


def test_the_reporter_redraws_progress_png_at_most_every_ten_seconds_and_at_close(tmp_path):
    run, _ = every_kind_run(tmp_path / "run", watched=True)
    picture = tmp_path / "run" / "progress.png"
    first = picture.read_bytes()  # drawn after the first evaluation, then throttled for 10 s
    assert run.reporter.PICTURE_EVERY_S == 10.0
    run.reporter.close()
    final = picture.read_bytes()
    assert final != first
    assert final == plots.save(plots.progress_figure(run.directory, run.state), tmp_path / "again.png").read_bytes()


def _three_generations(run: Scheduler) -> list[str]:
    """seed -> child (knob_mutation, scored) -> grandchild (knob_crossover with the seed as second parent)."""
    seed_id = run.state.seed_ids[0]
    child = add_child(run, SOURCE.replace("WIDTH = 16", "WIDTH = 32"), "WIDTH 16 -> 32")
    finish(run, child, fake(val=2.95))
    grandchild = Genome(source=SOURCE.replace("WIDTH = 16", "WIDTH = 32").replace("SEQ_LEN = 64", "SEQ_LEN = 32"),
                        parents=(child.genome_id, seed_id), operator="knob_crossover",
                        rationale="SEQ_LEN from the other parent")
    run.journal.add_genome(grandchild)
    chain = lineage(run.journal, grandchild.id)
    assert chain == [seed_id, child.genome_id, grandchild.id]
    return chain


def test_the_lineage_picture_shows_operators_on_edges_means_on_nodes_and_a_second_parent(tmp_path):
    run = new_run(tmp_path / "run", EVO_TINY, "", population_size=3)
    for val in (3.00, 3.02):
        finish(run, run.next_evaluation(), fake(val=val))
    chain = _three_generations(run)
    fig = plots.lineage_figure(run.journal, run.state, chain)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    operators = [t.get_text() for t in ax.texts if t.get_gid() == "operator"]
    assert operators == ["knob_mutation", "knob_crossover"]
    assert f"{chain[0]}  3.0100 bpb (n=2)" in texts and f"{chain[1]}  2.9500 bpb (n=1)" in texts
    assert f"{chain[2]}  not scored" in texts
    assert sum(1 for c in ax.collections if c.get_gid() == "node") == 3
    assert sum(1 for c in ax.collections if c.get_gid() == "second_parent") == 1
    assert "SEQ_LEN from the other parent" in texts
    assert f"Lineage of {chain[2]}: 2 generation(s) from the seed" in _title(fig)
    path = plots.draw_lineage(run.journal, run.state, chain, tmp_path / "lineage.png")
    height, width = matplotlib.image.imread(path).shape[:2]
    assert (width, height) == (1200, round(100 * (1.6 + 0.8 * 3)))


def test_export_pictures_are_drawn_without_operators_llm_clients_openai_or_libcst(tmp_path):
    run = new_run(tmp_path / "run", EVO_TINY, "", population_size=3)
    for val in (3.00, 3.02):
        finish(run, run.next_evaluation(), fake(val=val))
    chain = _three_generations(run)
    run.journal.close()
    out = tmp_path / "export" / f"{chain[-1]}.py"
    out.parent.mkdir()
    code = (f"import sys; sys.path[:0] = [{str(TESTS)!r}, {str(TESTS.parent)!r}]; import bare_evo; "
            "bare_evo.install_blocker(); from pathlib import Path; from evo.run import open_run; "
            "from evo.state import RunState; from evo.export import write_pictures; "
            f"run = open_run({str(tmp_path / 'run')!r}); state = RunState.replay(run.config, run.journal)[0]; "
            f"print(write_pictures(run, state, {chain!r}, Path({str(out)!r})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr
    lineage_png, progress_png = out.with_name(f"{chain[-1]}.lineage.png"), out.with_name(f"{chain[-1]}.progress.png")
    assert lineage_png.is_file() and progress_png.is_file()  # the run had no progress.png: drawn fresh
    assert matplotlib.image.imread(progress_png).shape[:2] == (600, 1100)


def test_export_copies_the_runs_progress_picture(tmp_path):
    run, ids = every_kind_run(tmp_path / "run", watched=True)
    run.reporter.close()
    chain = lineage(run.journal, ids["best"])
    written = write_pictures(run.directory, run.state, chain, tmp_path / "export" / "best.py")
    assert [p.name for p in written] == ["best.lineage.png", "best.progress.png"]
    assert written[1].read_bytes() == (tmp_path / "run" / "progress.png").read_bytes()
