"""Slots: local planning, and the same slot jobs run on a real Dask LocalCluster."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from evo.slots import SlotPool, plan_slots
from gpt.errors import UserError
from gpt.runner import SlotJob

TINY = Path(__file__).resolve().parent / "genomes" / "evo_tiny.py"


def test_cpu_slots_share_the_cores():
    cores = os.cpu_count() or 1
    one = plan_slots("cpu", 0)
    assert [s.name for s in one] == ["cpu0"] and one[0].threads == cores and one[0].device == "cpu"
    two = plan_slots("cpu", 2)
    assert len(two) == 2 and all(s.threads == max(1, cores // 2) for s in two)


def test_asking_for_cuda_without_a_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(UserError, match="no GPU is visible"):
        plan_slots("cuda", 0)


def test_unreachable_dask_scheduler_is_a_clear_error():
    with pytest.raises(UserError, match="cannot reach the Dask scheduler"):
        SlotPool.create("cpu", 1, "tcp://127.0.0.1:9")


@pytest.fixture(scope="module")
def dask_cluster():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None,
                                       host="127.0.0.1")
    yield cluster
    cluster.close()


@pytest.mark.slow
def test_slot_job_runs_on_a_dask_worker(dask_cluster, small_dataset, tmp_path):
    from distributed import Client

    with Client(dask_cluster) as client:
        pool = SlotPool(plan_slots("cpu", 1), client.get_executor(pure=False))
        job = SlotJob(genome=str(TINY), dataset=str(small_dataset.path), out_dir=str(tmp_path / "eval"),
                      budget_s=1.0, eval_tokens=4096)
        future = pool.submit(pool.slots[0], job)
        assert pool.free() == []
        result = future.result(timeout=300)
        assert pool.release(future) == "cpu0" and pool.free() == pool.slots
    assert result.status == "ok", result
    assert (tmp_path / "eval" / "result.json").exists()


@pytest.mark.slow
def test_evo_run_spreads_slots_over_a_dask_cluster(dask_cluster, small_source, data_env, tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "run.toml"
    config.write_text(f"""
[run]
preset = "smoke"
genomes = ["{TINY}"]
data = "{small_source}"
allow_unsealed = true  # the fixture corpus is cut from the stdlib
evals = 3
out = "{out}"
[slots]
budget_s = 1.0
eval_tokens = 4096
contended_share = 0.0
dask_scheduler = "{dask_cluster.scheduler_address}"
[fitness]
noise_repeats = 2
""")
    proc = subprocess.run([sys.executable, "-m", "evo.cli", "run", "--config", str(config), "--quiet"],
                          env=data_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    db = sqlite3.connect(out / "journal.sqlite")
    statuses = [s for (s,) in db.execute("SELECT status FROM evaluations WHERE state = 'done'")]
    assert len(statuses) == 3 and statuses.count("ok") >= 2
