"""Slots on Dask workers: one slot per worker GPU (or one CPU slot per worker), jobs by value.

The controller keeps the run directory; a worker gets each evaluation as a `gpt.worker.RemoteJob`
(the genome's source, the slot settings, the dataset's content key and hashes) plus the prepared
dataset, scattered once and cached on each worker by Dask, and sends back the result and the
stdout/stderr files, which this pool writes into the evaluation's directory as a local slot would.

Slots come from the scheduler: a worker started with `--resources GPU=N` gives N GPU slots, any
other worker one CPU slot with its thread count. They are re-read as workers join and leave, and a
joining worker's versions (evo, harness source hash, torch) must match the controller's or it gets
no slots. Faults become `SlotLost`, which the scheduler answers by putting the evaluation back in
the queue (it finishes once, is counted once): a worker that leaves mid-evaluation, a worker that
cannot obtain the data (it gets no more jobs), and a lost scheduler (waited for `scheduler_wait_s`,
then the run stops resumably).

`[cluster]` starts the workers as batch jobs through dask-jobqueue (SLURM, PBS, SGE, LSF);
`job_script` shows the batch script a job would run.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

from evo.slots import Slot
from gpt.errors import UserError
from gpt.job import SlotJob
from gpt.result import SlotResult

JOBQUEUE = {"slurm": "SLURM", "pbs": "PBS", "sge": "SGE", "lsf": "LSF"}
POLL_S = 1.0  # how often the pool looks for workers that left and for the scheduler
FACTS_TIMEOUT_S = 120  # a joining worker's report of its versions and sandbox level
WARM_END_S = 15  # the most shutdown waits for the workers to end their warm slots
MAX_ERRORS = 3  # task errors in a row (not genome failures: a broken worker) before a worker gets no jobs


class SlotLost(Exception):
    """An evaluation that did not finish through no fault of its genome: it goes back to the queue.
    `fatal`: the scheduler is gone for good; the run stops (resumably)."""

    def __init__(self, message: str, fatal: bool = False):
        super().__init__(message)
        self.fatal = fatal


# ------------------------------------------------------------------ slots from the scheduler
def slots_of(workers: dict, excluded: set = frozenset()) -> list[Slot]:
    """The slots of the scheduler's workers (`scheduler_info()["workers"]`): GPU=N resources give N
    GPU slots, else one CPU slot with the worker's threads. Sorted by worker name for stable names."""
    slots = []
    for address, info in sorted(workers.items(), key=lambda kv: str(kv[1].get("name", kv[0]))):
        if address in excluded:
            continue
        name = str(info.get("name", address))
        gpus = int((info.get("resources") or {}).get("GPU", 0))
        if gpus:
            slots += [Slot(f"{name}/gpu{i}", "cuda", 0, {}, worker=address, gpu=i) for i in range(gpus)]
        else:
            slots.append(Slot(f"{name}/cpu", "cpu", int(info.get("nthreads") or 1), {}, worker=address))
    return slots


def _facts(sandbox: str) -> dict:
    """What a worker reports before it gets a job (it runs there): its versions and sandbox level."""
    from gpt.worker import sandbox_level, versions

    return {**versions(), "sandbox": sandbox_level(sandbox)}


def _weaker(theirs: str, ours: str) -> bool:
    from gpt.sandbox import LEVELS

    return theirs not in LEVELS or LEVELS.index(theirs) > LEVELS.index(ours)


class DaskSlotPool:
    """The slot pool of a Dask cluster; the same interface as `evo.slots.SlotPool`."""

    def __init__(self, client, dataset: str | Path, wait_s: float = 60.0, note=print, cluster=None,
                 sandbox: str = "auto", sealed: bool = True):
        from gpt.dataset import Dataset
        from gpt.worker import DatasetRef

        self.client, self.cluster, self.wait_s, self.note = client, cluster, wait_s, note
        self.dataset_path = Path(dataset)
        manifest = Dataset(self.dataset_path).manifest  # a missing or damaged one: a UserError naming the fix
        self.ref = DatasetRef(key=manifest.get("key") or Path(dataset).name, hashes=manifest.get("hashes") or {},
                              source=str(manifest.get("source", "")))
        self.sandbox, self.sealed = sandbox, sealed
        self.errors: dict[str, int] = {}  # worker address -> task errors in a row
        facts = _facts(sandbox)
        self.level = facts.pop("sandbox")  # the run's integrity was checked at this level, here
        self.versions = facts
        self.checked: set[str] = set()  # workers whose versions match
        self.excluded: dict[str, str] = {}  # worker address -> why it gets no jobs
        self.busy: dict[str, Future] = {}
        self._remote: dict[Future, tuple] = {}  # our future -> (dask future, slot)
        self._slots: list[Slot] = []
        self._payload = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        for name in ("distributed.client", "distributed.batched"):  # a lost scheduler: our notes say it
            logging.getLogger(name).setLevel(logging.CRITICAL)
        self._refresh()
        self._monitor = threading.Thread(target=self._watch, name="dask-slots", daemon=True)
        self._monitor.start()

    # -------------------------------------------------------------- slots
    @property
    def slots(self) -> list[Slot]:
        return list(self._slots)

    def _refresh(self) -> None:
        try:
            workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        except Exception:  # noqa: BLE001 -- the scheduler is unreachable: no slot is free until it is back
            workers = {}
        for address in set(workers) - self.checked - set(self.excluded):
            self._check_versions(address)
        with self._lock:
            self._slots = slots_of({a: w for a, w in workers.items() if a in self.checked}, set(self.excluded))

    def _check_versions(self, address: str) -> None:
        """A worker gets slots only if its evo, harness and torch match ours and its sandbox is as strong."""
        try:  # in a worker thread (client.run would block the worker's event loop on torch's import)
            theirs = self.client.submit(_facts, self.sandbox, workers=[address], allow_other_workers=False,
                                        pure=False).result(timeout=FACTS_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 -- a worker that cannot answer gets no jobs
            theirs = None
            why = f"it did not report its versions ({exc})"
        if theirs is not None:
            differ = [f"{k} {theirs.get(k)} (controller {v})" for k, v in self.versions.items() if theirs.get(k) != v]
            if _weaker(theirs.get("sandbox", ""), self.level):
                differ.append(f"sandbox {theirs.get('sandbox')} (controller {self.level})")
            why = ("its versions differ from the controller's: " + ", ".join(differ) + "; install the controller's "
                   "evo checkout and torch on it (and bubblewrap, for the sandbox)") if differ else ""
        if why:
            self.excluded[address] = why
            self.note(f"worker {address} gets no jobs: {why}")
        else:
            self.checked.add(address)

    def free(self) -> list[Slot]:
        if self.client.status != "running":
            return []
        self._refresh()
        return [s for s in self._slots if s.name not in self.busy]

    def wait_for_slot(self) -> str | None:
        """Block until some worker offers a slot; None when one does, else why the run should stop."""
        deadline = time.monotonic() + self.wait_s
        self.note(f"waiting up to {self.wait_s:g} s for a Dask worker with a slot")
        while time.monotonic() < deadline and not self._closed.is_set():
            if self.free():
                return None
            time.sleep(POLL_S)
        return f"no Dask worker offered a slot for {self.wait_s:g} s; `evo resume` continues"

    # -------------------------------------------------------------- jobs
    def _payload_future(self):
        """The prepared dataset, scattered once: Dask copies it to each worker that runs a job."""
        if self._payload is None or self._payload.status != "finished":  # lost with a reconnect or its workers
            from gpt.worker import pack_dataset

            self._payload = self.client.scatter(pack_dataset(self.dataset_path), hash=False)
        return self._payload

    def submit(self, slot: Slot, job: SlotJob) -> Future:
        from gpt.worker import RemoteJob, run_remote

        job = replace(job, device=slot.device, threads=slot.threads)
        remote = RemoteJob(genome_source=Path(job.genome).read_text(), job=job, dataset=self.ref, gpu=slot.gpu,
                           sealed=self.sealed)
        ours: Future = Future()
        try:
            theirs = self.client.submit(run_remote, remote, self._payload_future(), workers=[slot.worker],
                                        allow_other_workers=False, pure=False, retries=0)
        except Exception as exc:  # noqa: BLE001 -- the client closed under us: the scheduler is gone
            self.busy[slot.name] = ours
            self._settle(ours, SlotLost(f"slot {slot.name}: could not submit it to the Dask scheduler ({exc})"))
            return ours
        with self._lock:
            self.busy[slot.name] = ours
            self._remote[ours] = (theirs, slot, Path(job.out_dir))
        theirs.add_done_callback(lambda f: self._landed(ours, f))
        return ours

    def _landed(self, ours: Future, theirs) -> None:
        """A worker's answer: its files written where a local slot writes them, the result handed on."""
        _, slot, out_dir = self._remote.get(ours, (None, None, None))
        if slot is None:
            return
        if theirs.status == "cancelled":  # a reconnect, a lost dependency, or our own cancel of a lost worker
            self._settle(ours, SlotLost(f"slot {slot.name}: the Dask scheduler dropped the job"))
            return
        try:
            outcome = theirs.result()
        except Exception as exc:  # noqa: BLE001 -- the worker died with it (KilledWorker) or the task broke
            self._worker_error(slot.worker, exc)
            self._settle(ours, SlotLost(f"slot {slot.name}: the evaluation was lost on its worker ({exc!r})"))
            return
        self.errors[slot.worker] = 0
        if outcome.data_error:
            self.excluded[slot.worker] = outcome.data_error
            self.note(f"worker {slot.worker} gets no more jobs: {outcome.data_error}")
            self._settle(ours, SlotLost(f"slot {slot.name}: {outcome.data_error}"))
            return
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            for name, data in outcome.files.items():
                (out_dir / Path(name).name).write_bytes(data)
        except OSError as exc:
            self._settle(ours, exc)
            return
        self._settle(ours, SlotResult.from_dict(outcome.result))

    def _worker_error(self, worker: str, exc: BaseException) -> None:
        self.errors[worker] = self.errors.get(worker, 0) + 1
        if self.errors[worker] >= MAX_ERRORS and worker not in self.excluded:
            self.excluded[worker] = f"{MAX_ERRORS} jobs in a row broke on it (last: {exc!r})"
            self.note(f"worker {worker} gets no more jobs: {self.excluded[worker]}")

    def _settle(self, ours: Future, outcome) -> None:
        """Complete our future once: with a result, or with the exception `outcome` is."""
        with self._lock:
            if ours.done():
                return
            if isinstance(outcome, BaseException):
                ours.set_exception(outcome)
            else:
                ours.set_result(outcome)

    def release(self, future: Future) -> str:
        with self._lock:
            name = next(n for n, f in self.busy.items() if f is future)
            del self.busy[name]
            self._remote.pop(future, None)
        return name

    # -------------------------------------------------------------- faults
    def _watch(self) -> None:
        """Every POLL_S: fail the evaluations of workers that left; wait for a lost scheduler."""
        lost_since, missing = None, set()
        while not self._closed.wait(POLL_S):
            connected = self.client.status == "running"
            if not connected:
                lost_since = lost_since or time.monotonic()
                gone_for = time.monotonic() - lost_since
                if self._remote:
                    self._fail_all(f"the Dask scheduler is unreachable ({gone_for:.0f} s)",
                                   fatal=gone_for >= self.wait_s)
                continue
            lost_since = None
            try:
                workers = set(self.client.scheduler_info(n_workers=-1).get("workers", {}))
            except Exception:  # noqa: BLE001 -- the scheduler went away between the two calls
                continue
            # gone: missing from two views in a row (one view of a busy scheduler once left a live worker out)
            gone, missing = missing - workers, {slot.worker for _, slot, _ in self._remote.values()} - workers
            for ours, (theirs, slot, _) in list(self._remote.items()):
                if slot.worker in gone and not ours.done():
                    theirs.cancel()
                    self._settle(ours, SlotLost(f"slot {slot.name}: worker {slot.worker} left mid-evaluation"))

    def _fail_all(self, why: str, fatal: bool) -> None:
        for ours, (_, slot, _) in list(self._remote.items()):
            self._settle(ours, SlotLost(f"slot {slot.name}: {why}", fatal=fatal))

    def _end_warm_slots(self) -> None:
        """Each worker's idle warm slots end with the run, not IDLE_S later. On a worker busy with a
        cancelled job this runs once that job is over (the cancel watch ends its genome first)."""
        from distributed import wait

        from gpt.worker import end_warm_slots

        if self.client.status != "running":
            return
        here = self.checked & set(self.client.scheduler_info(n_workers=-1).get("workers", {}))  # not the ones gone
        if here:
            wait([self.client.submit(end_warm_slots, workers=[address], allow_other_workers=False, pure=False)
                  for address in here], timeout=WARM_END_S)

    def shutdown(self) -> None:
        """Cancel what runs and close the client (and a started cluster); safe to call twice, and it
        never hides the error that ended the run behind one of Dask's own."""
        if self._closed.is_set():
            return
        self._closed.set()
        for close in [*(theirs.cancel for theirs, _, _ in list(self._remote.values())), self._end_warm_slots,
                      self.client.close, *([self.cluster.close] if self.cluster is not None else [])]:
            try:
                close()
            except Exception:  # noqa: BLE001 -- the scheduler or the client's loop is already gone
                pass


# ------------------------------------------------------------------ opening a pool
def open_dask_pool(config, dataset: str, note=print, sealed: bool = True) -> DaskSlotPool:
    """A pool on the running scheduler `config.dask_scheduler`, or on a cluster started from [cluster]."""
    try:
        from distributed import Client
    except ImportError:
        raise UserError('Dask slots need dask.distributed: pip install -e ".[cluster]"') from None
    cluster = None
    if config.dask_scheduler:
        address = config.dask_scheduler
    else:
        cluster = start_cluster(config)
        address = cluster
    try:
        client = Client(address, timeout=f"{max(20.0, config.scheduler_wait_s):g}s")  # also how long it reconnects
    except OSError as exc:
        raise UserError(f"cannot reach the Dask scheduler at {address}: {exc}; start it (`dask scheduler`) or "
                        "fix slots.dask_scheduler") from None
    pool = DaskSlotPool(client, dataset, wait_s=config.scheduler_wait_s, note=note, cluster=cluster,
                        sandbox=config.sandbox, sealed=sealed)
    if not pool.slots and pool.wait_for_slot():
        why = "; ".join(f"{a}: {w}" for a, w in pool.excluded.items()) or "no worker joined"
        pool.shutdown()
        raise UserError(f"no Dask worker offered a slot within slots.scheduler_wait_s = {config.scheduler_wait_s:g} s "
                        f"({why}); start workers (`dask worker ADDRESS`), or raise scheduler_wait_s while batch "
                        "jobs wait in the queue; the run directory is kept, `evo resume` continues it")
    versions = ", ".join(f"{k} {v}" for k, v in pool.versions.items())
    note(f"Dask scheduler {client.scheduler.address}: {len(pool.slots)} slots now ({versions})")
    return pool


def jobqueue_options(config) -> dict:
    """dask-jobqueue's keyword arguments for [cluster]: one worker process per job, its GPUs as Dask
    resources (one slot each), on SLURM the GPUs requested with --gres."""
    directives = list(config.job_directives)
    if config.kind == "slurm" and config.gpus_per_job:
        directives.append(f"--gres=gpu:{config.gpus_per_job}")
    options = {"cores": config.cores_per_job, "memory": config.memory_per_job, "walltime": config.walltime,
               "processes": 1, "job_name": "evo-worker", "job_extra_directives": directives,
               "job_script_prologue": list(config.worker_setup)}
    if config.gpus_per_job:
        options["worker_extra_args"] = ["--resources", f"GPU={config.gpus_per_job}"]
    if config.queue:
        options["queue"] = config.queue
    if config.account:
        options["account" if config.kind in ("slurm", "pbs") else "project"] = config.account
    return options


def _jobqueue(kind: str, what: str):
    """dask-jobqueue's class for this batch system: what = "Cluster" (submits jobs) or "Job" (one script)."""
    import importlib

    try:
        module = importlib.import_module(f"dask_jobqueue.{kind}")
    except ImportError:
        raise UserError('[cluster] needs dask-jobqueue: pip install -e ".[cluster]"') from None
    return getattr(module, f"{JOBQUEUE[kind]}{what}")


def job_script(config, scheduler: str = "tcp://SCHEDULER-ADDRESS:8786") -> str:
    """The batch script one job of [cluster] would run (nothing is submitted)."""
    if not config.kind:
        raise UserError("no [cluster] table: set cluster.kind (slurm, pbs, sge or lsf) in run.toml")
    job = _jobqueue(config.kind, "Job")(scheduler=scheduler, name="evo-worker", **jobqueue_options(config))
    return job.job_script()


def start_cluster(config):
    """Submit [cluster]'s jobs through dask-jobqueue; returns the cluster (its scheduler runs here)."""
    cluster = _jobqueue(config.kind, "Cluster")(**jobqueue_options(config))
    cluster.scale(jobs=config.jobs)
    return cluster
