"""Slots: where evaluations run. One slot = one device (a GPU or a share of the CPU), one genome at a time.

Local slots are threads that each drive one `gpt.runner.run_slot` subprocess pipeline;
GPU slots are pinned with CUDA_VISIBLE_DEVICES, CPU slots to cores of their own. With `slots.dask_scheduler` or a `[cluster]`
table, `evo.cluster.DaskSlotPool` runs the same jobs on Dask workers, by value; the scheduler
sees the same futures and the same pool interface either way.
"""
from __future__ import annotations

import os
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from gpt import warm
from gpt.devices import visible_gpus
from gpt.errors import UserError
from gpt.runner import SlotJob, run_slot


@dataclass(frozen=True)
class Slot:
    """A place to run one evaluation at a time."""

    name: str
    device: str
    threads: int = 0
    cpus: tuple[int, ...] = ()  # the cores a CPU slot's processes run on; (): not pinned
    env: dict = field(default_factory=dict)
    worker: str = ""  # the Dask worker's address ('' for a local slot)
    gpu: int | None = None  # on a Dask worker: the index among its own GPUs


def plan_slots(device: str, count: int) -> list[Slot]:
    """One slot per visible GPU (or `count`), else `count` CPU slots (default 1) dividing the cores.

    Each CPU slot is pinned to cores of its own (when there are enough): torch's thread count is set
    inside the untrusted genome, which can raise it, and a pinned slot's extra threads share its own
    cores instead of its neighbours'. The budget probe still fails a slot that used more than its share."""
    gpus = visible_gpus() if device in ("auto", "cuda") or device.startswith("cuda") else 0
    if device.startswith("cuda") and gpus == 0:
        raise UserError(f"slots.device = {device!r} but no GPU is visible; use device = \"cpu\" or \"auto\"")
    if gpus:
        n = count or gpus
        return [Slot(f"gpu{i % gpus}" + (f".{i // gpus}" if n > gpus else ""), "cuda", 0,
                     {"CUDA_VISIBLE_DEVICES": str(i % gpus)}) for i in range(n)]
    n = count or 1
    cores = sorted(os.sched_getaffinity(0))  # the cores this process may use (a cgroup or taskset may narrow them)
    threads = max(1, len(cores) // n)
    pinned = n * threads <= len(cores)
    return [Slot(f"cpu{i}", "cpu", threads, tuple(cores[i * threads:(i + 1) * threads]) if pinned else ())
            for i in range(n)]


class SlotPool:
    """Runs slot jobs and hands back futures; knows which slots are free."""

    def __init__(self, slots: list[Slot], executor: Executor | None = None):
        self.slots = slots
        self.executor = executor or ThreadPoolExecutor(max_workers=len(slots), thread_name_prefix="slot")
        self.busy: dict[str, Future] = {}

    def free(self) -> list[Slot]:
        return [s for s in self.slots if s.name not in self.busy]

    def wait_for_slot(self) -> str | None:
        """Local slots never appear later: with none free and nothing running there is nothing to wait for."""
        return "no slot is free"

    def submit(self, slot: Slot, job: SlotJob) -> Future:
        job = replace(job, device=slot.device, threads=slot.threads, cpus=slot.cpus, env={**job.env, **slot.env})
        future = self.executor.submit(run_slot, job)
        self.busy[slot.name] = future
        return future

    def release(self, future: Future) -> str:
        name = next(n for n, f in self.busy.items() if f is future)
        del self.busy[name]
        return name

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        warm.discard_all()


def open_pool(config, dataset: str, note=print, sealed: bool = True):
    """The run's slots: on Dask workers when slots.dask_scheduler or [cluster] says so, else local.
    `sealed`: the run's eval data was sealed here, so a worker must seal it too."""
    if config.dask_scheduler or config.kind:
        from evo.cluster import open_dask_pool

        return open_dask_pool(config, dataset, note, sealed)
    return SlotPool(plan_slots(config.device, config.slots))
