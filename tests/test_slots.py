"""Slots: local planning (Dask slots: tests/test_cluster.py)."""
from __future__ import annotations

import os

import pytest

from evo.slots import plan_slots
from gpt.errors import UserError


def test_cpu_slots_divide_the_cores_each_pinned_to_its_own():
    cores = sorted(os.sched_getaffinity(0))
    one = plan_slots("cpu", 0)
    assert [s.name for s in one] == ["cpu0"] and one[0].threads == len(cores) and one[0].device == "cpu"
    assert one[0].cpus == tuple(cores)
    n = min(2, len(cores))
    two = plan_slots("cpu", n)
    assert len(two) == n and all(s.threads == len(cores) // n for s in two)
    pinned = [c for s in two for c in s.cpus]
    assert sorted(pinned) == sorted(set(pinned)) and set(pinned) <= set(cores) and all(len(s.cpus) == s.threads for s in two)


def test_more_cpu_slots_than_cores_are_not_pinned():
    many = plan_slots("cpu", len(os.sched_getaffinity(0)) + 1)
    assert all(s.threads == 1 and s.cpus == () for s in many)


def test_asking_for_cuda_without_a_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(UserError, match="no GPU is visible"):
        plan_slots("cuda", 0)
