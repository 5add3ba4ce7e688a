"""Slots: local planning (Dask slots: tests/test_cluster.py)."""
from __future__ import annotations

import os

import pytest

from evo.slots import plan_slots
from gpt.errors import UserError


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
