"""A run directory: its config, its journal and its dataset. Every command opens runs here.

    RUN_DIR/run.toml         the resolved config (for people; the journal's copy is the one read back)
    RUN_DIR/journal.sqlite   the single source of truth (evo.journal)
    RUN_DIR/genomes/ID.py    each genome's source, written when a slot needs it
    RUN_DIR/evals/NNNNN-A/   one slot's work: result.json, logs, the submitted artifact
    RUN_DIR/tb/              TensorBoard event files
"""
from __future__ import annotations

import errno
import hashlib
import os
import socket
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from evo.config import RunConfig
from evo.genome import Genome
from evo.journal import CannotWrite, Journal
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
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(self.journal.genome(genome_id).source)
            except OSError as exc:
                _remove([path], [])  # a half-written genome would be taken for the whole one later
                raise UserError(f"cannot write {path}: {exc.strerror}; free space or make {self.path} writable, "
                                f"then run the command again (`evo resume {self.path}` continues a run)") from None
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
    evaluations in one transaction (a run is either usable by `evo resume` or not there: what a failed
    creation made is removed again)."""
    if (path / JOURNAL_NAME).exists():
        raise UserError(f"{path} already holds a run; continue it with `evo resume {path}` or pick --out")
    made_dirs, made = _missing(path), [p for p in (path / "run.toml", path / JOURNAL_NAME) if not p.exists()]
    journal = None
    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / "run.toml").write_text(config.to_toml())
        journal = Journal(path / JOURNAL_NAME)
        meta = {"config": config.to_dict(), "dataset": str(dataset.path), "seeds": [g.id for g in seeds],
                "integrity": integrity}
        journal.start_run(meta, [(g, [harness_seed(config.seed, g.id, k) for k in range(config.noise_repeats)])
                                 for g in seeds])
        journal.event("integrity", **integrity)
    except (OSError, CannotWrite) as exc:
        if journal is not None:
            journal.close()
        _remove(made, made_dirs)
        raise _creation_error(path, exc) from None
    return Run(path, config, journal, str(dataset.path))


def _creation_error(path: Path, exc: OSError | CannotWrite) -> UserError:
    if isinstance(exc, CannotWrite):
        kind, at = exc.kind, path / JOURNAL_NAME
    else:
        kind = {errno.ENOSPC: "full", errno.EDQUOT: "full", errno.EROFS: "readonly", errno.EACCES: "readonly",
                errno.EPERM: "readonly"}.get(exc.errno, "io")
        at = exc.filename or path
    why = {"full": "the disk is full", "readonly": "the place is read-only"}.get(kind) or str(exc)
    return UserError(f"cannot create the run directory {path}: {why} (at {at}); pick --out on a writable disk with "
                     "free space (nothing of this run was left behind)")


def _missing(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, the outermost last."""
    out = []
    while not path.exists() and path != path.parent:
        out.append(path)
        path = path.parent
    return out


def _remove(files: list[Path], folders: list[Path]) -> None:
    """Remove what a failed creation made: its files (a journal with its -wal and -shm), then its folders."""
    for p in files + [Path(f"{p}{tail}") for p in files if p.name == JOURNAL_NAME for tail in ("-wal", "-shm")]:
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass
    for folder in folders:  # innermost first; only when empty
        try:
            folder.rmdir()
        except OSError:
            pass


def check_writable(path: Path, what: str) -> None:
    """Refuse early (before a dataset is prepared) a directory that cannot be created or written."""
    existing = next((p for p in [path, *path.parents] if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise UserError(f"cannot create {what} {path}: {existing} is a file, not a directory; pick another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "on a read-only file system" if _read_only_mount(existing) else "not writable by you"
        raise UserError(f"cannot create {what} {path}: {existing} is {why}; pick a writable --out")


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def open_run(path: str | Path, overrides: dict | None = None, readonly: bool = False) -> Run:
    """An existing run: its journaled config (with `overrides`, e.g. a new evaluation limit). The journal is
    checked and opened read-only; unless `readonly`, the command's first write reopens it for writing (so a
    command that ends up only reading, or a journal that is not one, is never written)."""
    path = Path(path)
    journal_path = path / JOURNAL_NAME
    if not path.is_dir():
        raise UserError(f"{path} is not a run directory ({'a file' if path.exists() else 'it does not exist'}); "
                        "give the RUN_DIR that `evo run` printed (`evo run --out DIR` creates one)")
    if not journal_path.is_file():
        raise UserError(f"{path} is not a run directory (it has no {JOURNAL_NAME}); give the RUN_DIR that `evo "
                        "run` printed (`evo run --out DIR` creates one)")
    journal = Journal(journal_path, readonly=True, writable_later=not readonly)  # a UserError if not a journal
    saved = journal.get_meta("config")
    if saved is None:
        journal.close()
        raise UserError(f"{path} holds a journal but no run (it was killed while being created); "
                        "delete it and start again with `evo run`")
    return Run(path, RunConfig.from_dict(saved, overrides), journal, journal.get_meta("dataset"))
