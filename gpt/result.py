"""What one slot produced: the single schema of `run_slot`'s answer, `result.json` and the journal.

The runner (gpt.runner), its clock (gpt.clock) and the trusted scorer (gpt.score) each fill some of
these fields; nothing else defines a result key. `to_dict()` is what `result.json` holds;
`from_dict()` reads any version's result JSON back (unknown keys are ignored, missing ones take
their defaults), because journals keep results written by older versions.

Field metadata says where a field goes: `journal` marks the columns of the journal's `evaluations`
table, `summary` the `key: value` lines `evo eval` prints, `scorer` the fields the scorer's answer
may set (the runner takes nothing else from it).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

STATUSES = ("ok", "flagged", "failed")


def _f(default: Any = None, *, factory=None, journal: bool = False, summary: bool = False, scorer: bool = False):
    meta = {"journal": journal, "summary": summary, "scorer": scorer}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class SlotResult:
    """One slot's outcome. Field order is the order of `SUMMARY_FIELDS` and `JOURNAL_COLUMNS`."""

    # the verdict
    status: str = _f("failed", journal=True, summary=True, scorer=True)  # ok | flagged | failed (failed unless told)
    reason: str | None = _f(journal=True, summary=True, scorer=True)  # failure reason, or failed probes joined by ","
    # the metric (the scorer's, on the documents of each split)
    val_bpb: float | None = _f(journal=True, summary=True, scorer=True)  # bits per byte on val
    heldout_bpb: float | None = _f(journal=True, summary=True, scorer=True)  # bits per byte on heldout
    test_bpb: float | None = _f(journal=True, summary=True, scorer=True)  # bits per byte on test (only if asked)
    scored_tokens: int | None = _f(summary=True, scorer=True)  # val target tokens scored
    # probe verdicts: "pass" | "fail", None when the probe did not run
    causality: str | None = _f(summary=True, scorer=True)  # no prediction moves when later tokens change
    canary: str | None = _f(summary=True, scorer=True)  # planted canaries score like their controls
    stateless: str | None = _f(summary=True, scorer=True)  # no graph mutation, a repeated batch scores the same
    budget: str | None = _f(summary=True)  # the runner's clock: trained within budget, exported promptly
    # the runner's measurements, in seconds
    train_seconds: float | None = _f(journal=True, summary=True)  # connect (or spawn + allowance) to submit
    slot_seconds: float | None = _f(journal=True, summary=True)  # the whole slot, checks to result.json
    eval_seconds: float | None = _f(journal=True, summary=True, scorer=True)  # request to answer of the scorer
    startup_seconds: float | None = _f(summary=True)  # job start to connect (the wait for a cold interpreter included)
    export_seconds: float | None = _f(summary=True)  # submit to the genome's exit
    cpu_seconds: float | None = _f(summary=True)  # CPU time of every process of the slot (from /proc)
    steps: int | None = _f(summary=True)  # the genome's own `steps:` line: informational only
    params: int | None = None  # the genome's own `params:` line: informational only
    train_loss: float | None = None  # the genome's own `train_loss:` line: informational only
    # where and how it ran
    sandbox: str | None = _f(journal=True)  # the level the genome and the scorer ran under
    cpu_share: float | None = None  # cpu_seconds / (wall seconds x threads); None on GPU slots
    contended: bool = False  # a CPU slot starved by other load: its score says little
    budget_s: float | None = None  # the job's budget
    seed: int | None = None  # the harness seed of the slot
    device: str | None = None  # cpu | cuda[:N]
    warm: bool = False  # the genome's interpreter and the scorer were started before the job came (gpt.warm)
    pid: int | None = None  # of the slot's root process, which ran this genome and nothing else
    worker: str = ""  # the Dask worker that ran it (host and pid), '' for a local slot
    returncode: int | None = None  # the genome process's exit code; None if none was started
    limits: dict | None = None  # the slot's caps (memory_mb, disk_mb, max_procs, max_files)
    leftover_processes: int | None = None  # processes the supervisor killed after the genome exited
    escaped_processes: int | None = None  # processes that got away from the supervisor (caught by the runner)
    peak_memory_mb: int | None = None  # the watchdog's highest reading of the slot's resident memory
    # what there is to read
    detail: str | None = _f(scorer=True)  # for people: why it failed or was flagged
    stderr_tail: str = ""  # the end of the genome's stderr, when the slot failed
    static_findings: list = _f(factory=list)  # every static check finding (dicts: rule, line, severity, ...)
    scoring: dict | None = _f(scorer=True)  # eval settings and the tokens scored per split
    probes: dict = _f(factory=dict, scorer=True)  # each probe's numbers (causality, canary, stateless, budget)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def flagged(self) -> bool:
        return self.status == "flagged"

    @property
    def failed(self) -> bool:
        return self.status not in ("ok", "flagged")

    @property
    def reasons(self) -> list[str]:
        """The reason split at its commas ([] if none)."""
        return [r for r in (self.reason or "").split(",") if r]

    def flag(self, *reasons: str) -> None:
        """Mark the result flagged, adding `reasons` to the ones it has."""
        self.status, self.reason = "flagged", ",".join(self.reasons + list(reasons))

    def to_dict(self) -> dict:
        """Every field, JSON-serializable: what result.json holds."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "SlotResult":
        """A result from result JSON of any version: unknown keys ignored, missing keys at their defaults."""
        return cls(**{k: d[k] for k in FIELDS if k in d})


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SlotResult))
JOURNAL_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SlotResult) if f.metadata.get("journal"))
SUMMARY_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SlotResult) if f.metadata.get("summary"))
SCORER_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SlotResult) if f.metadata.get("scorer"))
