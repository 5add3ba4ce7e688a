"""Which accelerator this process can use: the one place that asks torch.

The controller (device "auto", how many GPU slots), `evo eval` and a genome run by hand all
ask here, so they agree. torch is imported on the first call, not at import.
"""
from __future__ import annotations


def visible_gpus() -> int:
    """How many CUDA devices torch sees (CUDA_VISIBLE_DEVICES applies); 0 without CUDA."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def default_device() -> str:
    """"cuda" if torch sees a GPU, else "cpu"."""
    return "cuda" if visible_gpus() > 0 else "cpu"
