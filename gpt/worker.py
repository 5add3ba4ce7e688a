"""The slot worker: one evaluation by value, on a machine that shares no files with the controller.

A Dask worker (or any process) runs `run_remote(job, payload)`. Everything it needs comes in the
call: the genome's source, the slot's settings and the dataset's content key with the sha256 of
every split file; the dataset itself arrives once per worker as `payload` (the prepared folder as a
tar archive, shipped by the controller and cached by Dask), is checked against those hashes and kept
in the worker's own cache (EVO_WORKER_DIR, default ~/.cache/evo/worker). The slot then runs exactly
as it does locally (`gpt.runner.run_slot`: static checks, sandbox, caps, a secret-free environment,
the harness clock and the sandboxed scorer), in a scratch directory that is removed afterwards.
What comes back is data: the result's fields and the stdout/stderr files. The run directory stays
on the controller.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

from gpt.job import SlotJob

WORKER_DIR_ENV = "EVO_WORKER_DIR"
RETURNED_FILES = ("result.json", "stdout.txt", "stderr.txt")  # what a slot's out dir sends back


@dataclass(frozen=True)
class DatasetRef:
    """A prepared dataset by content: its cache key, the sha256 of each split file, and its source
    spec (for messages)."""

    key: str
    hashes: dict
    source: str = ""


@dataclass(frozen=True)
class RemoteJob:
    """One evaluation by value. `job` is the slot job with the controller's paths left in; the worker
    replaces them with its own. `gpu`: the index among the worker's own visible GPUs, or None."""

    genome_source: str
    job: SlotJob
    dataset: DatasetRef
    gpu: int | None = None
    sealed: bool = True  # the run's eval data was sealed on the controller: this worker must seal it too


@dataclass
class RemoteOutcome:
    """What a worker sends back: the result's fields and the out dir's files, or why it could not
    run the job at all (`data_error`: it has no usable copy of the dataset)."""

    result: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)
    worker: str = ""
    data_error: str = ""


def worker_root() -> Path:
    return Path(os.environ.get(WORKER_DIR_ENV) or Path.home() / ".cache" / "evo" / "worker")


def harness_version() -> str:
    """A hash of the harness's own source (gpt/*.py): two workers that score alike have the same one."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def versions() -> dict:
    """What must match between the controller and every worker for their scores to compare."""
    import torch

    import evo

    return {"evo": evo.__version__, "harness": harness_version(), "torch": torch.__version__}


def sandbox_level(requested: str) -> str:
    """The sandbox level a slot of this worker would run at, or why it could not run at all."""
    from gpt import sandbox

    try:
        return sandbox.resolve_level(requested)
    except Exception as exc:  # noqa: BLE001 -- a UserError naming the missing piece
        return f"unavailable ({exc})"


def identity() -> str:
    return f"{socket.gethostname()} pid {os.getpid()}"


# ------------------------------------------------------------------ the dataset
def pack_dataset(path: str | Path) -> bytes:
    """The prepared dataset folder as an uncompressed tar archive (its token files barely compress)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(str(path), arcname=".")
    return buffer.getvalue()


def split_files(folder: Path) -> dict:
    return {"train": folder / "train" / "train.bin",
            **{s: folder / "eval" / f"{s}.bin" for s in ("val", "heldout", "test")}}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _matches(folder: Path, ref: DatasetRef) -> str:
    """'' if every split file of `folder` has the hash `ref` names, else what differs."""
    for split, path in split_files(folder).items():
        want = ref.hashes.get(split)
        if want is None:
            continue
        if not path.is_file():
            return f"{split} split missing"
        if _sha256(path) != want:
            return f"{split} split's sha256 differs from the controller's manifest"
    return ""


def ensure_dataset(ref: DatasetRef, payload: bytes | None) -> Path:
    """The worker's checked copy of the dataset: from its cache when it was checked against these same
    hashes, else unpacked from `payload`. Raises RuntimeError naming the worker and the source when
    neither gives a copy that matches."""
    folder = worker_root() / "data" / ref.key
    checked = folder / ".checked"
    stamp = json.dumps(ref.hashes, sort_keys=True)
    if checked.is_file() and checked.read_text() == stamp:
        return folder
    where = f"worker {identity()} has no usable copy of dataset {ref.key} ({ref.source or 'unknown source'})"
    if payload is None:
        raise RuntimeError(f"{where}: it was not shipped with the job")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{ref.key}-", dir=folder.parent))
    except OSError as exc:
        raise RuntimeError(f"{where}: {exc}") from None
    try:
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r") as tar:
            tar.extractall(scratch, filter="data")
        problem = _matches(scratch, ref)
        if problem:
            raise RuntimeError(f"{where}: {problem}")
        _local_roots(scratch)
        (scratch / ".checked").write_text(stamp)
        shutil.rmtree(folder, ignore_errors=True)  # a copy checked against other hashes: the same corpus, re-split
        try:
            scratch.rename(folder)
        except OSError:  # another slot of this worker unpacked it first
            if not (checked.is_file() and checked.read_text() == stamp):
                raise
    except (OSError, tarfile.TarError) as exc:
        raise RuntimeError(f"{where}: {exc}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder


def _local_roots(folder: Path) -> None:
    """Add this machine's own folders of the corpus's documents to the manifest's document_roots, which
    name the controller's: the sandbox hides both (the built-in corpus lives inside this install's
    `gpt/` here, which the genome's Python may read)."""
    from gpt.sources import document_roots, minimal_dirs

    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    try:
        here = document_roots(manifest.get("source", "")) or []
    except Exception:  # noqa: BLE001 -- a source this worker cannot resolve has no folder here to hide
        here = []
    if manifest.get("document_roots") is not None:
        manifest["document_roots"] = minimal_dirs(list(manifest["document_roots"]) + list(here))
        path.write_text(json.dumps(manifest, indent=1))


# ------------------------------------------------------------------ one evaluation
def gpu_env(gpu: int | None) -> dict:
    """CUDA_VISIBLE_DEVICES for the worker's own GPU number `gpu` (its own CUDA_VISIBLE_DEVICES, as
    dask-cuda sets per worker, is respected)."""
    if gpu is None:
        return {}
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return {"CUDA_VISIBLE_DEVICES": visible[gpu] if gpu < len(visible) else str(gpu)}


def run_remote(remote: RemoteJob, payload: bytes | None = None) -> RemoteOutcome:
    """Run one evaluation on this worker and send back its result and files (the worker's copy of the
    data and its scratch directory stay here)."""
    from gpt.runner import run_slot

    try:
        dataset = ensure_dataset(remote.dataset, payload)
        if remote.sealed:
            _check_sealed(dataset, remote.job.sandbox)
        (worker_root() / "slots").mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="slot-", dir=worker_root() / "slots"))
    except (RuntimeError, OSError) as exc:
        return RemoteOutcome(worker=identity(), data_error=str(exc))
    watch = _CancelWatch()
    try:
        genome = scratch / "genome.py"
        genome.write_text(remote.genome_source)
        job = replace(remote.job, genome=str(genome), dataset=str(dataset), out_dir=str(scratch / "out"),
                      env={**remote.job.env, **gpu_env(remote.gpu)},
                      warm_dir=str(worker_root() / "warm" / ("cpu" if remote.gpu is None else f"gpu{remote.gpu}"))
                      if remote.job.warm_dir else "", scorer_dir=str(worker_root() / "scorers"))
        result = run_slot(job)
        result.worker = identity()
        out = scratch / "out"
        (out / "result.json").write_text(json.dumps(result.to_dict(), indent=1))
        files = {name: (out / name).read_bytes() for name in RETURNED_FILES if (out / name).is_file()}
        return RemoteOutcome(result=result.to_dict(), files=files, worker=result.worker)
    finally:
        watch.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def end_warm_slots() -> None:
    """End this worker's warm slots: the controller's run is over, and an idle one would hold its memory
    (a GPU's too) until gpt.warm.IDLE_S."""
    from gpt import warm

    warm.discard_all()


class _CancelWatch(threading.Thread):
    """Ends this call's genome once the controller cancels its Dask task (the run stopped, or the job
    was given up): Dask cannot stop a running task, so without this the genome would hold its slot, GPU
    included, until its budget and grace ran out. Outside a Dask worker it does nothing."""

    POLL_S = 0.5

    def __init__(self):
        super().__init__(daemon=True, name="evo-cancel-watch")
        self.runner = threading.get_ident()
        self._halt = threading.Event()
        try:
            from distributed import get_worker
            from distributed.worker import thread_state

            self.worker, self.key = get_worker(), thread_state.key
        except (ImportError, ValueError, AttributeError):  # not a Dask task
            return
        self.start()

    def cancelled(self) -> bool:
        task = self.worker.state.tasks.get(self.key)
        return task is None or task.state in ("cancelled", "released", "forgotten")

    def run(self) -> None:
        from gpt.training import stop_slots_run_by

        while not self._halt.wait(self.POLL_S):
            if self.cancelled():
                stop_slots_run_by(self.runner)

    def stop(self) -> None:
        """Called as the job ends: no check of this job outlives it (the thread's next job is not this one's)."""
        self._halt.set()
        if self.is_alive():
            self.join(timeout=5)


_SEALED: set = set()  # (dataset folder, requested level) found sealed by this worker process


def _check_sealed(folder: Path, sandbox: str) -> None:
    """A run whose eval data was sealed on the controller runs only where it is sealed too."""
    from gpt.dataset import Dataset
    from gpt.sandbox import resolve_level
    from gpt.sealing import seal

    if (folder, sandbox) in _SEALED:
        return
    try:
        verdict = seal(Dataset(folder), resolve_level(sandbox))
    except Exception as exc:  # noqa: BLE001 -- a level this worker lacks (a UserError naming the fix)
        raise RuntimeError(f"worker {identity()} cannot seal the eval data: {exc}") from None
    if not verdict.sealed:
        raise RuntimeError(f"worker {identity()} cannot seal the eval data: {verdict.why}")
    _SEALED.add((folder, sandbox))

