"""What a run writes for TensorBoard, read back by TensorBoard's own code: an HParams session per finished
evaluation (knob values, operator, purpose, structure id; metrics val_bpb and fitness), the progress picture
as an image, and the custom-scalars page."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import api_pb2, metadata

from evo.tblog import HPARAMS_DIR, structure_id
from synthetic import add_child, fake, finish
from test_plots import KINDS, SOURCE, every_kind_run

KNOBS = {"WIDTH", "SEQ_LEN", "BATCH_SIZE", "LEARNING_RATE", "WEIGHT_DECAY"}  # tests/genomes/evo_tiny.py's


def _accumulator(path: Path) -> EventAccumulator:
    acc = EventAccumulator(str(path), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    acc.Reload()
    return acc


def _sessions(tb: Path) -> dict[str, EventAccumulator]:
    return {d.name: _accumulator(d) for d in sorted((tb / HPARAMS_DIR).iterdir())}


def test_each_finished_evaluation_is_an_hparams_session_with_its_knobs_and_metrics(tmp_path):
    run, ids = every_kind_run(tmp_path / "run", watched=True)
    run.reporter.close()
    sessions = _sessions(tmp_path / "run" / "tb")
    evaluations = run.journal.done_evaluations()
    assert list(sessions) == [f"{e.done_seq:05d}-{e.genome_id}" for e in evaluations]
    for evaluation, acc in zip(evaluations, sessions.values()):
        content = acc.PluginTagToContent("hparams")
        start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
        end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
        hparams = dict(start.hparams)
        assert KNOBS | {"operator", "purpose", "status", "genome", "structure"} == set(hparams)
        assert hparams["purpose"].string_value == evaluation.purpose
        assert hparams["genome"].string_value == evaluation.genome_id
        status = evaluation.result.status
        assert hparams["status"].string_value == status
        assert end.status == (api_pb2.STATUS_SUCCESS if status == "ok" else api_pb2.STATUS_FAILURE)
        scalars = acc.Tags()["scalars"]
        if status == "ok":
            assert [s.value for s in acc.Scalars("hparams/val_bpb")] == pytest.approx([evaluation.result.val_bpb])  # float32
            assert [s.step for s in acc.Scalars("hparams/val_bpb")] == [evaluation.done_seq]
        else:  # a flagged or failed evaluation has no val_bpb to trust and no fitness
            assert scalars == []
    best = sessions[f"{KINDS['crowned'][0]:05d}-{ids['best']}"]
    start = metadata.parse_session_start_info_plugin_data(best.PluginTagToContent("hparams")[metadata.SESSION_START_INFO_TAG])
    assert start.hparams["LEARNING_RATE"].number_value == 0.05 and start.hparams["WIDTH"].number_value == 16
    assert start.hparams["operator"].string_value == "knob_mutation"
    assert best.Scalars("hparams/fitness")[0].value == pytest.approx(run.state.records[ids["best"]].fitness)


def test_knob_changes_keep_the_structure_id_and_a_code_change_makes_a_new_one():
    assert structure_id(SOURCE) == structure_id(SOURCE.replace("WIDTH = 16", "WIDTH = 32"))
    assert structure_id(SOURCE) == structure_id(SOURCE.replace("LEARNING_RATE = 0.03", "LEARNING_RATE = 3e-2  # x"))
    assert structure_id(SOURCE) != structure_id(SOURCE.replace("bias=False", "bias=True"))
    assert structure_id(SOURCE) != structure_id(SOURCE + "\nEXTRA_KNOB = 1\n")


def test_the_hparams_dashboard_lists_one_row_per_evaluation_with_knob_columns_and_both_metrics(tmp_path):
    """The HParams plugin's own backend (what its table and parallel-coordinates views ask) over the run's tb/."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context, get_experiment, list_session_groups

    run, ids = every_kind_run(tmp_path / "run", watched=True)
    run.reporter.close()
    logdir = str(tmp_path / "run" / "tb")
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(logdir)
    mux.Reload()
    plugin = backend_context.Context(base_plugin.TBContext(
        logdir=logdir, multiplexer=mux, data_provider=data_provider.MultiplexerDataProvider(mux, logdir)))
    experiment = get_experiment.Handler(context.RequestContext(), plugin, "", api_pb2.GetExperimentRequest()).run()
    assert KNOBS <= {h.name for h in experiment.hparam_infos}
    assert {m.name.tag for m in experiment.metric_infos} == {"hparams/val_bpb", "hparams/fitness"}
    request = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=100, allowed_statuses=[
        api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING])
    for info in experiment.hparam_infos:
        request.col_params.add(hparam=info.name)
    for info in experiment.metric_infos:
        request.col_params.add(metric=info.name)
    groups = list_session_groups.Handler(context.RequestContext(), plugin, "", request).run()
    assert groups.total_size == len(run.journal.done_evaluations()) == 10
    rows = {g.name: g for g in groups.session_groups}
    crowned = rows[f"{KINDS['crowned'][0]:05d}-{ids['best']}"]
    assert {m.name.tag: round(m.value, 4) for m in crowned.metric_values} == {
        "hparams/val_bpb": 2.82, "hparams/fitness": round(run.state.records[ids["best"]].fitness, 4)}
    assert crowned.hparams["LEARNING_RATE"].number_value == 0.05


def test_the_progress_picture_is_logged_every_five_evaluations_and_at_close(tmp_path):
    run, _ = every_kind_run(tmp_path / "run", watched=True)
    finish(run, add_child(run, SOURCE.replace("WIDTH = 16", "WIDTH = 24"), "one more"), fake(val=3.04))
    run.reporter.close()
    images = _accumulator(tmp_path / "run" / "tb").Images("progress")
    assert [i.step for i in images] == [5, 10, 11]
    assert {(i.width, i.height) for i in images} == {(1100, 600)}
    assert all(i.encoded_image_string.startswith(b"\x89PNG") for i in images)


def test_the_custom_scalars_page_charts_val_bpb_the_best_with_its_noise_band_fitness_and_utilization(tmp_path):
    run, _ = every_kind_run(tmp_path / "run", watched=True)
    run.reporter.close()
    acc = _accumulator(tmp_path / "run" / "tb")
    # one layout per writer (each session of a run writes it; here the swapped-in reporter's too), all the same
    (layout,) = {layout_pb2.Layout.FromString(c.tensor_proto.string_val[0]).SerializeToString()
                 for c in acc.Tensors("custom_scalars__config__")}
    layout = layout_pb2.Layout.FromString(layout)
    (category,) = layout.category
    charts = {chart.title: chart for chart in category.chart}
    assert set(charts) == {"val_bpb: each evaluation and the best", "best val_bpb ± noise floor", "noise floor",
                           "fitness: each evaluation and the population", "slot utilization"}
    (band,) = charts["best val_bpb ± noise floor"].margin.series
    assert (band.value, band.lower, band.upper) == ("run/best_val_bpb", "run/best_minus_floor", "run/best_plus_floor")
    scalars = set(acc.Tags()["scalars"])
    assert {band.value, band.lower, band.upper} <= scalars
    for chart in charts.values():  # every line of the page has data
        for pattern in chart.multiline.tag:
            assert any(re.search(pattern, tag) for tag in scalars), (chart.title, pattern)
    best, low = acc.Scalars("run/best_val_bpb")[-1], acc.Scalars("run/best_minus_floor")[-1]
    assert best.value - low.value == pytest.approx(run.state.floor, abs=1e-6)
