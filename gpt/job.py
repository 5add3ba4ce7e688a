"""A slot job: everything needed to run and score one genome in one slot (the runner's input)."""
from __future__ import annotations

from dataclasses import dataclass, field

from gpt import sandbox as sandboxing

DEFAULT_OUTPUT_CAP = 4 * 1024 * 1024
# A CPU slot whose processes got less than this share of its threads' time (CPU seconds over wall seconds
# x threads, measured by the runner from /proc) was starved by something else on the machine: `contended`.
CONTENDED_CPU_SHARE = 0.4
# Above this share a CPU slot used more cores than its threads (honest genomes measure 0.95-1.0): the budget
# probe fails. The margin covers torch's helper threads and /proc's sampling, not a second core.
OVERUSED_CPU_SHARE = 1.25


@dataclass(frozen=True)
class SlotJob:
    """Everything needed to run and score one genome in one slot."""

    genome: str
    dataset: str
    out_dir: str
    budget_s: float
    seed: int = 0
    device: str = "cpu"
    grace_s: float | None = None
    export_allowance_s: float | None = None  # None: default_export_allowance(budget_s)
    contended_share: float = CONTENDED_CPU_SHARE  # below this CPU share a CPU slot was starved; 0: never
    eval_tokens: int = 32768
    eval_seq_len: int = 256
    threads: int = 0
    cpus: tuple[int, ...] = ()  # cores the slot is pinned to (evo.slots plans them); (): unpinned
    test: bool = False
    output_cap: int = DEFAULT_OUTPUT_CAP
    env: dict = field(default_factory=dict)  # extra variables, e.g. CUDA_VISIBLE_DEVICES
    sandbox: str = "auto"  # auto | bwrap | netns | none (see gpt.sandbox)
    memory_mb: int | None = None  # per-slot memory cap; None: sandboxing.default_memory_mb(); 0: no cap
    disk_mb: int = sandboxing.DEFAULT_DISK_MB  # cap on each file and on the work dir's total size; 0: no cap
    max_procs: int = sandboxing.DEFAULT_MAX_PROCS  # cap on the slot's live processes (polled); 0: no cap
    warm_dir: str = ""  # where the next job's warm slot is staged (gpt.warm); '' for a one-off slot
    scorer_dir: str = ""  # where a scorer kept between jobs has its scratch (gpt.scorer); '' : beside the out dir
    static_checks: bool = True  # False only for tests and red-team runs that must reach the sandbox

    def limits(self) -> sandboxing.Limits:
        memory = sandboxing.default_memory_mb() if self.memory_mb is None else self.memory_mb
        return sandboxing.Limits(memory_mb=memory, disk_mb=self.disk_mb, max_procs=self.max_procs,
                                 cpus=tuple(self.cpus))
