"""A run directory: its config, its journal and its dataset. Every command opens runs here.

    RUN_DIR/run.toml         the resolved config (for people; the journal's copy is the one read back)
    RUN_DIR/journal.sqlite   the single source of truth (evo.journal)
    RUN_DIR/genomes/ID.py    each genome's source, written when a slot needs it
    RUN_DIR/evals/NNNNN-A/   one slot's work: result.json, logs, the submitted artifact
    RUN_DIR/tb/              TensorBoard event files
"""
from __future__ import annotations

import hashlib
import os
import socket
import sqlite3
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from evo.config import RunConfig
from evo.genome import Genome
from evo.journal import Journal
from gpt.errors import UserError
from gpt.job import SlotJob

JOURNAL_NAME = "journal.sqlite"


def harness_seed(run_seed: int, genome_id: str, k: int) -> int:
    """The harness seed of a genome's k-th evaluation: fresh per evaluation, fixed by the run seed."""
    return int.from_bytes(hashlib.sha256(f"{run_seed}:{genome_id}:{k}".encode()).digest()[:4], "big") >> 1


@dataclass
class Run:
    """An open run directory."""

    path: Path
    config: RunConfig
    journal: Journal
    dataset: str  # the prepared dataset's directory

    @property
    def seed_ids(self) -> list[str]:
        return self.journal.get_meta("seeds", [])

    def integrity_line(self) -> str:
        """One line for status and export: the sandbox level and whether the eval data was sealed."""
        from gpt.sealing import describe

        return describe(self.journal.get_meta("integrity"))

    def genome_path(self, genome_id: str) -> Path:
        path = self.path / "genomes" / f"{genome_id}.py"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.journal.genome(genome_id).source)
        return path

    def next_seed(self, genome_id: str) -> int:
        """The harness seed of this genome's next evaluation."""
        return harness_seed(self.config.seed, genome_id, self.journal.count_for(genome_id))

    def slot_job(self, genome: str | Path, out_dir: str | Path, seed: int, **changes) -> SlotJob:
        """The one place a run's settings become a slot job (the scheduler, export and `evo eval --run`)."""
        c = self.config
        job = SlotJob(genome=str(genome), dataset=self.dataset, out_dir=str(out_dir), budget_s=c.budget_s,
                      seed=seed, grace_s=c.grace_s or None, eval_tokens=c.eval_tokens,
                      eval_seq_len=c.eval_seq_len, sandbox=c.sandbox, contended_share=c.contended_share)
        return replace(job, **changes)

    def claim(self) -> None:
        """Journal that this process now drives the run (`evo status` tells a live controller from a dead one)."""
        self.journal.set_meta("controller", {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})

    def release(self) -> None:
        self.journal.set_meta("controller", None)

    def controller_alive(self) -> bool | None:
        """Whether the process that last drove the run still runs: True, False, or None when it ran on
        another host (unknown from here)."""
        owner = self.journal.get_meta("controller")
        if not owner:
            return False
        if owner.get("host") != socket.gethostname():
            return None
        try:
            os.kill(owner["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def eval_dir(self, eval_id: int, attempt: int) -> Path:
        return self.path / "evals" / f"{eval_id:05d}-{attempt}"


def integrity_check(dataset, sandbox_level: str, allow_unsealed: bool) -> dict:
    """The sandbox level this run gets and whether its eval splits are sealed from genomes. An unsealed
    source is refused unless the user opted in; every weakness is printed (and journaled by the caller)."""
    from gpt.sandbox import resolve_level
    from gpt.sealing import seal, unprotected

    level = resolve_level(sandbox_level)
    verdict = seal(dataset, level)
    if not verdict.sealed and not allow_unsealed:
        raise UserError(f"the eval splits of {dataset.manifest['source']!r} cannot be sealed from genomes: "
                        f"{verdict.why}. Or pass --allow-unsealed (allow_unsealed = true) to run anyway; the run is "
                        "then stamped unsealed")
    gaps = unprotected(level)
    for gap in gaps:
        print(f"warning: sandbox level {level!r} does not give {gap}", file=sys.stderr)
    if not verdict.sealed:
        print(f"warning: this run is UNSEALED: {verdict.why}", file=sys.stderr)
    return {"sandbox": level, "sealed": verdict.sealed, "unsealed_why": verdict.why or None, "unprotected": gaps}


def create_run(path: Path, config: RunConfig, seeds: list[Genome], dataset, integrity: dict) -> Run:
    """A new run directory: run.toml, then the journal with the config, the seeds and their noise
    evaluations in one transaction (a run is either usable by `evo resume` or not there)."""
    if (path / JOURNAL_NAME).exists():
        raise UserError(f"{path} already holds a run; continue it with `evo resume {path}` or pick --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / "run.toml").write_text(config.to_toml())
        journal = Journal(path / JOURNAL_NAME)
    except OSError as exc:
        raise UserError(f"cannot create the run directory {path}: {exc.strerror}; pick a writable --out") from None
    meta = {"config": config.to_dict(), "dataset": str(dataset.path), "seeds": [g.id for g in seeds],
            "integrity": integrity}
    journal.start_run(meta, [(g, [harness_seed(config.seed, g.id, k) for k in range(config.noise_repeats)])
                             for g in seeds])
    journal.event("integrity", **integrity)
    return Run(path, config, journal, str(dataset.path))


def open_run(path: str | Path, overrides: dict | None = None) -> Run:
    """An existing run: its journaled config (with `overrides`, e.g. a new evaluation limit)."""
    path = Path(path)
    journal_path = path / JOURNAL_NAME
    if not journal_path.is_file() or journal_path.stat().st_size == 0:
        raise UserError(f"{path} is not a run directory (no {JOURNAL_NAME}"
                        + (", or an empty one" if journal_path.exists() else "") + "); `evo run` creates one")
    try:
        journal = Journal(journal_path)
        saved = journal.get_meta("config")
    except sqlite3.DatabaseError as exc:
        raise UserError(f"{journal_path} cannot be read ({exc}); it is damaged or not a journal. Restore it from a "
                        "backup; evo will not write to it") from None
    if saved is None:
        raise UserError(f"{path} holds a journal but no run (it was killed while being created); "
                        "delete it and start again with `evo run`")
    return Run(path, RunConfig.from_dict(saved, overrides), journal, journal.get_meta("dataset"))
