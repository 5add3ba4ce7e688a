"""Slots on Dask workers: a real scheduler and real worker processes, hidden from the controller's
files by bubblewrap as on separate machines; slot discovery; worker loss; the SLURM job script."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from evo.cluster import DaskSlotPool, slots_of
from gpt import worker as slot_worker
from gpt.errors import UserError

distributed = pytest.importorskip("distributed")
TINY = Path(__file__).resolve().parent / "genomes" / "evo_tiny.py"
REPO = Path(__file__).resolve().parents[1]


class DaskProcesses:
    """A `dask scheduler` and `dask worker` processes, each its own process group (so a test can kill
    one like a machine going away). `hide`: paths each worker sees as an empty tmpfs (bwrap)."""

    def __init__(self, folder: Path, env: dict, hide: list[Path] = ()):
        hide = [p.resolve() for p in hide if p.exists()]
        self.folder, self.env = folder, env
        self.hide = [p for p in hide if not any(o != p and o in p.parents for o in hide)]  # outermost only
        self.workers: dict[str, subprocess.Popen] = {}
        info = folder / "scheduler.json"
        self.scheduler = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(info)], env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=(folder / "scheduler.log").open("w"))
        deadline = time.time() + 60
        while not info.exists() and time.time() < deadline:
            time.sleep(0.2)
        self.address = json.loads(info.read_text())["address"]

    def add_worker(self, name: str, resources: str = "", nthreads: int = 1) -> None:
        command = [sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--name", name,
                   "--nthreads", str(nthreads), "--no-nanny", "--no-dashboard"]
        if resources:
            command += ["--resources", resources]
        env = dict(self.env, EVO_WORKER_DIR=str(self.folder / f"worker-{name}"))
        if self.hide:
            wrap = ["bwrap", "--dev-bind", "/", "/", "--die-with-parent"]
            for path in self.hide:
                wrap += ["--tmpfs", str(path)]
            command = wrap + ["--"] + command
        self.workers[name] = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                              stderr=(self.folder / f"worker-{name}.log").open("w"))

    def kill(self, name: str) -> None:
        _killpg(self.workers.pop(name))

    def close(self) -> None:
        for name in list(self.workers):
            self.kill(name)
        _killpg(self.scheduler)


def _killpg(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _wait_workers(client, n: int) -> None:
    client.wait_for_workers(n, timeout=120)


def _bwrap_or_skip():
    if not shutil.which("bwrap"):
        pytest.skip("bubblewrap is not installed (make sandbox): it hides the controller's files from the workers")


# ------------------------------------------------------------------ pure pieces
def test_slots_come_from_worker_resources():
    workers = {"tcp://10.0.0.2:1": {"name": "node2", "nthreads": 16, "resources": {"GPU": 2}},
               "tcp://10.0.0.1:1": {"name": "node1", "nthreads": 8, "resources": {}},
               "tcp://10.0.0.3:1": {"name": "node3", "nthreads": 4, "resources": {"GPU": 1}}}
    slots = slots_of(workers)
    assert [s.name for s in slots] == ["node1/cpu", "node2/gpu0", "node2/gpu1", "node3/gpu0"]
    assert [(s.device, s.threads, s.gpu) for s in slots] == [("cpu", 8, None), ("cuda", 0, 0), ("cuda", 0, 1),
                                                             ("cuda", 0, 0)]
    assert {s.worker for s in slots if s.name.startswith("node2")} == {"tcp://10.0.0.2:1"}
    assert [s.name for s in slots_of(workers, {"tcp://10.0.0.2:1"})] == ["node1/cpu", "node3/gpu0"]


def test_a_worker_gpu_is_its_own_visible_device(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    assert slot_worker.gpu_env(1) == {"CUDA_VISIBLE_DEVICES": "7"}
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert slot_worker.gpu_env(1) == {"CUDA_VISIBLE_DEVICES": "1"} and slot_worker.gpu_env(None) == {}


def test_worker_checks_the_shipped_dataset_against_the_manifest(small_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv(slot_worker.WORKER_DIR_ENV, str(tmp_path / "worker"))
    manifest = small_dataset.manifest
    ref = slot_worker.DatasetRef(manifest["key"], manifest["hashes"], "text:corpus/*.txt")
    payload = slot_worker.pack_dataset(small_dataset.path)

    # a payload whose val split was altered on the way is refused, naming the worker and the source
    tampered = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(payload)) as src, tarfile.open(fileobj=tampered, mode="w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None
            if member.name.endswith("eval/val.bin"):
                data = bytes([data[0] ^ 1]) + data[1:]
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    with pytest.raises(RuntimeError, match=r"pid \d+ has no usable copy .*text:corpus.*val split's sha256"):
        slot_worker.ensure_dataset(ref, tampered.getvalue())
    with pytest.raises(RuntimeError, match="was not shipped"):
        slot_worker.ensure_dataset(ref, None)
    assert not (tmp_path / "worker" / "data" / ref.key).exists()

    folder = slot_worker.ensure_dataset(ref, payload)
    assert (folder / "eval" / "val.bin").read_bytes() == (small_dataset.path / "eval" / "val.bin").read_bytes()
    assert slot_worker.ensure_dataset(ref, None) == folder  # cached: nothing shipped the second time


def test_slurm_job_script_from_the_cluster_table(tmp_path):
    pytest.importorskip("dask_jobqueue")
    config = tmp_path / "run.toml"
    config.write_text("""
[cluster]
kind = "slurm"
jobs = 4
queue = "gpu"
account = "lab42"
gpus_per_job = 8
cores_per_job = 32
memory_per_job = "480GB"
walltime = "12:00:00"
job_directives = ["--constraint=h100"]
worker_setup = ["source /shared/evo/.venv/bin/activate"]
""")
    proc = subprocess.run([sys.executable, "-m", "evo.cli", "cluster", "--config", str(config), "--dry-run"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    for line in ("#SBATCH -p gpu", "#SBATCH -A lab42", "#SBATCH --cpus-per-task=32", "#SBATCH -t 12:00:00",
                 "#SBATCH --gres=gpu:8", "#SBATCH --constraint=h100", "source /shared/evo/.venv/bin/activate"):
        assert line in script.splitlines(), (line, script)
    assert "distributed.cli.dask_worker" in script and "--resources GPU=8" in script
    assert "4 job(s)" in proc.stderr

    config.write_text("[slots]\nbudget_s = 30.0\n")
    proc = subprocess.run([sys.executable, "-m", "evo.cli", "cluster", "--config", str(config)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and "set cluster.kind" in proc.stderr and "Traceback" not in proc.stderr


def test_unreachable_dask_scheduler_is_a_clear_error(tmp_path):
    config = tmp_path / "run.toml"
    # a short wait: the connect timeout is its floor of 20 s, not the 60 s default
    config.write_text('[slots]\ndask_scheduler = "tcp://127.0.0.1:9"\nscheduler_wait_s = 3\n')
    from evo import config as cfg
    from evo.cluster import open_dask_pool

    with pytest.raises(UserError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        open_dask_pool(cfg.resolve(cfg.read_toml(config)), str(tmp_path))


# ------------------------------------------------------------------ real scheduler, real workers
@pytest.fixture
def dask_processes(tmp_path, data_env):
    procs = DaskProcesses(tmp_path, data_env)
    yield procs
    procs.close()


@pytest.mark.slow
def test_slots_follow_workers_joining_and_versions_must_match(dask_processes, small_dataset):
    from distributed import Client

    notes = []
    dask_processes.add_worker("gpuhost", resources="GPU=2")
    with Client(dask_processes.address, timeout="30s") as client:
        _wait_workers(client, 1)
        pool = DaskSlotPool(client, small_dataset.path, wait_s=5, note=notes.append)
        assert [s.name for s in pool.free()] == ["gpuhost/gpu0", "gpuhost/gpu1"]
        assert all(s.device == "cuda" for s in pool.slots)

        dask_processes.add_worker("cpuhost", nthreads=2)  # joins mid-run
        _wait_workers(client, 2)
        assert [s.name for s in pool.free()] == ["cpuhost/cpu", "gpuhost/gpu0", "gpuhost/gpu1"]
        assert pool.slots[0].threads == 2

        pool.versions = dict(pool.versions, torch="0.0-other")  # the next worker to join differs from us
        dask_processes.add_worker("oldhost")
        _wait_workers(client, 3)
        assert "oldhost" not in " ".join(s.name for s in pool.free())
        assert any("versions differ" in n and "(controller 0.0-other)" in n for n in notes), notes
        assert any("torch" in reason for reason in pool.excluded.values())
        pool.shutdown()


def _run_config(tmp_path: Path, source: str, scheduler: str, evals: int) -> Path:
    config = tmp_path / "run.toml"
    config.write_text(f"""
[run]
preset = "smoke"
genomes = ["{TINY}"]
data = "{source}"
allow_unsealed = true  # the fixture corpus is cut from the stdlib
evals = {evals}
out = "{tmp_path / 'run'}"
[slots]
budget_s = 2.0
eval_tokens = 4096
contended_share = 0.0
dask_scheduler = "{scheduler}"
scheduler_wait_s = 20
[fitness]
noise_repeats = 2
""")
    return config


@pytest.mark.slow
def test_run_on_hidden_workers_survives_a_worker_killed_mid_evaluation(tmp_path_factory, tmp_path, small_source,
                                                                         data_env):
    """Two workers that cannot see the run directory or the data cache (bwrap over them); one is
    killed while it trains: its evaluation runs again on the other, once, and every evaluation is
    journaled exactly once."""
    _bwrap_or_skip()
    base = tmp_path_factory.getbasetemp()
    hide = [base, Path(data_env["EVO_DATA_DIR"]), Path.home() / ".cache" / "evo"]
    procs = DaskProcesses(tmp_path, data_env, hide=hide)
    try:
        procs.add_worker("w0")
        procs.add_worker("w1")
        from distributed import Client

        with Client(procs.address, timeout="30s") as client:
            _wait_workers(client, 2)
            seen = client.run(lambda paths: [os.path.exists(p) for p in paths],
                              [str(tmp_path), data_env["EVO_DATA_DIR"]])
            assert all(v == [False, False] for v in seen.values()), seen  # as on other machines

        evals = 4
        run = subprocess.Popen([sys.executable, "-m", "evo.cli", "run", "--config",
                                str(_run_config(tmp_path, small_source, procs.address, evals)), "--quiet"],
                               env=data_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        journal = tmp_path / "run" / "journal.sqlite"
        victim = None
        deadline = time.time() + 300
        while victim is None and time.time() < deadline and run.poll() is None:
            time.sleep(0.5)
            if not journal.exists():
                continue
            try:
                with sqlite3.connect(journal) as db:
                    rows = db.execute("SELECT id, slot FROM evaluations WHERE state = 'running' AND slot LIKE 'w1/%' "
                                      "AND started < ?", (time.time() - 1.5,)).fetchall()
            except sqlite3.OperationalError:  # the run has created the file but not yet its tables
                continue
            if rows:
                victim = rows[0][0]
                procs.kill("w1")
        assert victim is not None, "no evaluation ever ran on w1"
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0, err[-3000:]

        db = sqlite3.connect(journal)
        done = db.execute("SELECT id, slot, attempt, result FROM evaluations WHERE state = 'done'").fetchall()
        assert len(done) == evals and len({d[0] for d in done}) == evals
        assert db.execute("SELECT COUNT(*) FROM evaluations WHERE state = 'running'").fetchone()[0] == 0
        lost = [json.loads(d) for (d,) in db.execute("SELECT data FROM events WHERE kind = 'slot_lost'")]
        # the victim was lost (and maybe a job sent to w1 before the scheduler saw it leave), never anything on w0
        assert victim in [e["eval_id"] for e in lost] and all("w1/cpu" in e["reason"] for e in lost), lost
        again = next(d for d in done if d[0] == victim)
        assert again[1] == "w0/cpu" and again[2] >= 2  # ran again, on the surviving worker
        # every job provably ran on a worker process (not the controller), and came back by value
        controller_pid = str(run.pid)
        for eval_id, slot, attempt, result in done:
            worker = json.loads(result)["worker"]
            assert slot in ("w0/cpu", "w1/cpu") and " pid " in worker and not worker.endswith(f"pid {controller_pid}")
            assert (tmp_path / "run" / "evals" / f"{eval_id:05d}-{attempt}" / "result.json").is_file()

        # the export's one test score runs on the run's workers too (the controller may have no GPU)
        export = subprocess.Popen([sys.executable, "-m", "evo.cli", "export", str(tmp_path / "run")], env=data_env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, err = export.communicate(timeout=600)
        assert export.returncode == 0, err[-3000:]
        with sqlite3.connect(journal) as db:
            slot, result = db.execute("SELECT slot, result FROM evaluations WHERE purpose = 'export'").fetchone()
        result = json.loads(result)
        assert slot == "w0/cpu" and result["status"] == "ok" and result["test_bpb"] is not None, result
        assert " pid " in result["worker"] and not result["worker"].endswith(f"pid {export.pid}")
    finally:
        procs.close()


@pytest.mark.slow
def test_a_lost_scheduler_stops_the_run_resumably_and_a_new_one_finishes_it(tmp_path, small_source, data_env):
    procs = DaskProcesses(tmp_path, data_env)
    try:
        procs.add_worker("w0")
        config = _run_config(tmp_path, small_source, procs.address, evals=4)
        config.write_text(config.read_text().replace("scheduler_wait_s = 20", "scheduler_wait_s = 3"))
        run = subprocess.Popen([sys.executable, "-m", "evo.cli", "run", "--config", str(config), "--quiet"],
                               env=data_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        journal = tmp_path / "run" / "journal.sqlite"
        deadline = time.time() + 300
        while time.time() < deadline and run.poll() is None:
            time.sleep(0.5)
            if journal.exists():
                try:
                    with sqlite3.connect(journal) as db:
                        if db.execute("SELECT COUNT(*) FROM evaluations WHERE state = 'running'").fetchone()[0]:
                            break
                except sqlite3.OperationalError:  # the run has created the file but not yet its tables
                    continue
        procs.close()  # the scheduler and its worker go away mid-evaluation
        out, err = run.communicate(timeout=300)
        assert run.returncode == 75, err[-3000:]
        assert "`evo resume` continues" in out and "Traceback" not in err, out + err
        with sqlite3.connect(journal) as db:
            assert db.execute("SELECT COUNT(*) FROM evaluations WHERE state = 'running'").fetchone()[0] == 0
            done_before = db.execute("SELECT COUNT(*) FROM evaluations WHERE state = 'done'").fetchone()[0]
            lost = [json.loads(d)["reason"] for (d,) in db.execute("SELECT data FROM events WHERE kind = 'slot_lost'")]
        assert lost and all("scheduler" in reason for reason in lost), lost
        assert done_before < 4

        (tmp_path / "again").mkdir()
        fresh = DaskProcesses(tmp_path / "again", data_env)
        try:
            fresh.add_worker("w1")
            proc = subprocess.run([sys.executable, "-m", "evo.cli", "resume", str(tmp_path / "run"),
                                   "--dask-scheduler", fresh.address, "--quiet"],
                                  env=data_env, capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, proc.stderr[-3000:]
        finally:
            fresh.close()
        with sqlite3.connect(journal) as db:
            slots = [s for (s,) in db.execute("SELECT slot FROM evaluations WHERE state = 'done' ORDER BY done_seq")]
        assert len(slots) == 4 and slots[-1] == "w1/cpu"
        # its scheduler gone for good, the run still exports here
        export = subprocess.run([sys.executable, "-m", "evo.cli", "export", str(tmp_path / "run"), "--local"],
                                env=data_env, capture_output=True, text=True, timeout=600)
        assert export.returncode == 0, export.stderr[-3000:]
        with sqlite3.connect(journal) as db:
            slot, result = db.execute("SELECT slot, result FROM evaluations WHERE purpose = 'export'").fetchone()
        assert slot == "cpu0" and json.loads(result)["test_bpb"] is not None
    finally:
        procs.close()


def _processes_naming(text: str) -> list[int]:
    """Pids of live processes whose command line contains `text`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if text in cmdline and state not in ("Z", "X"):
                found.append(int(entry))
    return found


@pytest.mark.slow
def test_a_cancelled_job_ends_its_genome_on_the_worker_at_once(dask_processes, small_dataset, tmp_path):
    """Dask cannot stop a running task: the worker's own watch ends the genome when the controller cancels
    the job (here: the run shuts its pool down), instead of leaving it on its slot for the budget and grace.
    The warm slot an earlier job left waiting on the worker ends with the run too, not 600 s later."""
    from distributed import Client

    from gpt.job import SlotJob

    genome = REPO / "tests" / "genomes" / "loops_forever.py"  # connects, then sleeps; its children carry its work dir
    dask_processes.add_worker("w0")
    worker_dir = str((tmp_path / "worker-w0").resolve())
    with Client(dask_processes.address, timeout="30s") as client:
        _wait_workers(client, 1)
        pool = DaskSlotPool(client, small_dataset.path, wait_s=5, note=lambda _: None, sealed=False)
        quick = SlotJob(genome=str(TINY), dataset=str(small_dataset.path),
                        out_dir=str(tmp_path / "quick"), budget_s=1, grace_s=60, eval_tokens=2048, eval_seq_len=64,
                        warm_dir=str(tmp_path / "warm"))
        assert pool.submit(pool.free()[0], quick).result(timeout=300).status == "ok"
        pool.release(next(iter(pool.busy.values())))
        assert _processes_naming(worker_dir + "/warm/"), "the worker started no warm slot for a next job"
        job = SlotJob(genome=str(genome), dataset=str(small_dataset.path), out_dir=str(tmp_path / "out"), budget_s=300,
                      grace_s=60, static_checks=False)  # no warm dir: another shape, so the warm slot stays idle
        pool.submit(pool.free()[0], job)
        deadline = time.monotonic() + 120
        while not _processes_naming(worker_dir + "/slots/") and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # the genome is past its imports and sleeping on its 300 s budget
        running = _processes_naming(worker_dir + "/slots/")
        assert running, "the job never started on the worker"
        cancelled = time.monotonic()
        pool.shutdown()
        while _processes_naming(worker_dir + "/") and time.monotonic() < cancelled + 30:
            time.sleep(0.2)
        left, idle = _processes_naming(worker_dir + "/slots/"), _processes_naming(worker_dir + "/warm/")
        took = time.monotonic() - cancelled
    assert not left, f"the cancelled genome still runs on the worker: pids {left}"
    assert not idle, f"the worker's idle warm slot outlived the run: pids {idle}"
    assert took < 15, took
    assert dask_processes.workers["w0"].poll() is None  # the worker itself lives on for the next run
