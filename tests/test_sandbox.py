"""The sandbox and limits of gpt.runner, tested with real subprocesses, real bwrap and real unshare.

The escape genomes below must reach the sandbox, so they run with `static_checks=False`
(the static checks would reject every one of them before a slot is spent).
"""
from __future__ import annotations

import json
import os
import socket
import textwrap
import time
import uuid
from pathlib import Path

import pytest

import gpt
from gpt import sandbox
from gpt.errors import UserError
from gpt.runner import SlotJob, run_slot

REPO = Path(__file__).resolve().parents[1]
AVAILABLE = sandbox.available_levels()


def needs(level: str):
    return pytest.mark.skipif(level not in AVAILABLE, reason=f"sandbox level {level} is not available here: "
                                                             f"{sandbox.probe(level)[1]}")


@pytest.fixture
def run_genome(tmp_path, small_dataset):
    """Run a genome source through run_slot; returns (result, stdout text, out dir)."""

    def run(source: str, level: str, name: str = "g", **kw):
        genome = tmp_path / f"{name}.py"
        genome.write_text(textwrap.dedent(source))
        out = tmp_path / f"out-{name}-{level}"
        kw = {"budget_s": 10.0, "grace_s": 5.0, "static_checks": False, **kw}
        result = run_slot(SlotJob(genome=str(genome), dataset=str(small_dataset.path), out_dir=str(out),
                                  sandbox=level, **kw))
        stdout = (out / "stdout.txt").read_text() if (out / "stdout.txt").exists() else ""
        return result, stdout, out

    return run


def probes(stdout: str) -> dict:
    line = next(x for x in stdout.splitlines() if x.startswith("PROBES "))
    return json.loads(line[len("PROBES "):])


def processes_with(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(pid))
    return found


# ---------------------------------------------------------------- levels


def test_levels_are_probed_and_auto_picks_the_strongest():
    assert "none" in AVAILABLE
    assert AVAILABLE == [lv for lv in sandbox.LEVELS if lv in AVAILABLE]  # strongest first
    assert sandbox.resolve_level("auto") == AVAILABLE[0]
    assert sandbox.resolve_level("none") == "none"
    with pytest.raises(UserError, match="unknown sandbox level"):
        sandbox.resolve_level("docker")


def test_unavailable_level_is_a_user_error_naming_the_fix(monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)  # neither bwrap nor unshare installed
    sandbox.reset_probe_cache()
    try:
        assert sandbox.available_levels() == ["none"]
        assert sandbox.resolve_level("auto") == "none"
        with pytest.raises(UserError, match="apt-get install bubblewrap"):
            sandbox.resolve_level("bwrap")
        with pytest.raises(UserError, match="unshare"):
            sandbox.resolve_level("netns")
    finally:
        monkeypatch.undo()
        sandbox.reset_probe_cache()


# ---------------------------------------------------------------- confinement

ESCAPE = """
import json, os, socket, sys
spec = json.load(open(os.environ["EVO_SLOT_SPEC"]))
train = spec["train_path"]
dataset = os.path.dirname(os.path.dirname(train))
res = {}
def attempt(name, fn):
    try:
        value = fn()
        res[name] = ["ok", value]
    except Exception as exc:
        res[name] = [type(exc).__name__, str(exc)[:200]]
attempt("train", lambda: len(open(train, "rb").read(64)))
attempt("manifest", lambda: open(os.path.join(dataset, "manifest.json")).read(20))
attempt("val", lambda: open(os.path.join(dataset, "eval", "val.bin"), "rb").read(8).hex())
attempt("test", lambda: open(os.path.join(dataset, "eval", "test.bin"), "rb").read(8).hex())
attempt("dataset_listing", lambda: sorted(os.listdir(dataset)))
attempt("write_work", lambda: open("mine.txt", "w").write("x"))
attempt("write_slot_dir", lambda: open(os.path.join(os.path.dirname(spec["out_dir"]), "escaped.txt"), "w").write("x"))
attempt("write_outside", lambda: open(OUTSIDE, "w").write("x"))
attempt("write_gpt", lambda: open(GPT_FILE, "w").write("x"))
attempt("write_spec", lambda: open(os.environ["EVO_SLOT_SPEC"], "a").write("x"))
attempt("read_shadow", lambda: open("/etc/shadow").read(5))
attempt("home", lambda: sorted(os.listdir(os.path.expanduser("~root"))))
attempt("unix_socket", lambda: socket.socket(socket.AF_UNIX).connect(UNIX_SOCKET))
attempt("caps", lambda: [l.split()[1] for l in open("/proc/self/status") if l.startswith(("CapEff", "CapBnd"))])
attempt("connect", lambda: socket.create_connection(("127.0.0.1", PORT), timeout=3).close())
attempt("secret", lambda: os.environ.get("OPENAI_API_KEY"))
attempt("env", lambda: sorted(os.environ))
attempt("pids", lambda: sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
print("PROBES " + json.dumps(res))
"""

EXPECTED_ENV = {"PATH", "HOME", "TMPDIR", "LANG", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONPATH",
                "EVO_SLOT_SPEC", "EVO_SLOT_TOKEN", "EVO_CLOCK_FD", "OMP_NUM_THREADS", "PWD"}  # bwrap sets PWD


@pytest.fixture
def listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.setblocking(False)
    yield srv
    srv.close()


@pytest.fixture
def unix_listener(tmp_path):
    path = tmp_path / "host.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(8)
    yield path
    srv.close()


def _escape_source(tmp_path, listener, gpt_file, unix_socket="/nonexistent.sock") -> tuple[str, Path]:
    outside = tmp_path / "outside" / "escaped.txt"
    outside.parent.mkdir()
    src = (f"OUTSIDE = {str(outside)!r}\nGPT_FILE = {str(gpt_file)!r}\nPORT = {listener.getsockname()[1]}\n"
           f"UNIX_SOCKET = {str(unix_socket)!r}\n" + ESCAPE)
    return src, outside


def _no_connection(listener) -> bool:
    try:
        listener.accept()[0].close()
        return False
    except BlockingIOError:
        return True


@needs("bwrap")
def test_bwrap_confines_files_network_environment(tmp_path, run_genome, listener, unix_listener, monkeypatch,
                                                  small_dataset):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leak")
    gpt_file = Path(gpt.__file__).resolve().parent / f"escaped_{uuid.uuid4().hex[:8]}.py"
    src, outside = _escape_source(tmp_path, listener, gpt_file, unix_listener)
    try:
        result, stdout, out = run_genome(src, "bwrap")
        assert not gpt_file.exists(), "the genome wrote into the harness package"
    finally:
        gpt_file.unlink(missing_ok=True)
    p = probes(stdout)
    assert result.sandbox == "bwrap" and result.reason == "no_submit"
    # the train split and nothing else of the dataset
    assert p["train"] == ["ok", 64]
    for name in ("manifest", "val", "test"):
        assert p[name][0] == "FileNotFoundError", (name, p[name])
    assert p["dataset_listing"] == ["ok", ["train"]]
    assert (small_dataset.path / "manifest.json").exists()  # it is there on the host
    # writes: the work dir only
    assert p["write_work"][0] == "ok" and (out / "work" / "mine.txt").exists()
    assert not (out / "escaped.txt").exists()
    assert not outside.exists()
    assert p["write_gpt"][0] == "OSError" and "Read-only" in p["write_gpt"][1]
    assert p["write_spec"][0] == "OSError"
    assert json.loads((out / "slot_spec.json").read_text())["train_path"] == str(small_dataset.train_path)
    # no host secrets, no network, no host sockets, no privileges, no view of other processes
    assert p["read_shadow"][0] == "FileNotFoundError"
    visible_in_root = {Path(d).relative_to("/root").parts[0] for d in map(str, sandbox.python_dirs())
                       if d.startswith("/root/")}
    assert p["home"][0] != "ok" or set(p["home"][1]) <= visible_in_root, p["home"]
    assert p["connect"][0] != "ok" and _no_connection(listener)
    assert p["unix_socket"][0] == "FileNotFoundError"
    assert p["caps"][0] == "ok" and p["caps"][1][0] == "0" * 16  # CapEff: no capability at all
    assert p["secret"] == ["ok", None]
    assert set(p["env"][1]) <= EXPECTED_ENV
    assert max(p["pids"][1]) < 10, "the genome sees processes outside its PID namespace"


@needs("bwrap")
def test_no_python_on_the_machine_shows_its_language_reference_to_the_genome(run_genome):
    """pydoc_data holds the language reference as text, a copy of documents the built-in corpus is made of:
    hidden for the running interpreter and for every other Python the sandbox shows (the system's, on Debian)."""
    import glob as globbing
    import sysconfig

    places = sorted({os.path.join(sysconfig.get_paths()["stdlib"], "pydoc_data"),
                     *globbing.glob("/usr/lib/python3*/pydoc_data"), *globbing.glob("/usr/local/lib/python3*/pydoc_data")})
    places = [p for p in places if os.path.isdir(p) and os.listdir(p)]
    assert places, "no pydoc_data on this machine to hide"
    source = f"""
import json, os
print("PROBES " + json.dumps({{p: os.listdir(p) if os.path.isdir(p) else None for p in {places!r}}}), flush=True)
"""
    result, stdout, _ = run_genome(source, "bwrap")
    seen = probes(stdout)
    assert all(not listing for listing in seen.values()), seen  # empty, or not there at all


@needs("netns")
def test_netns_blocks_network_and_secrets(tmp_path, run_genome, listener, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leak")
    src, _ = _escape_source(tmp_path, listener, tmp_path / "not-the-repo.py")  # netns does not protect files
    result, stdout, _ = run_genome(src, "netns")
    p = probes(stdout)
    assert result.sandbox == "netns"
    assert p["caps"][0] == "ok" and set(p["caps"][1]) == {"0" * 16}  # no capability to undo the namespaces
    assert p["train"] == ["ok", 64]
    assert p["connect"][0] != "ok" and _no_connection(listener)
    assert p["secret"] == ["ok", None]
    assert set(p["env"][1]) <= EXPECTED_ENV
    assert max(p["pids"][1]) < 10


def test_none_still_scrubs_the_environment(tmp_path, run_genome, listener, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leak")
    src, _ = _escape_source(tmp_path, listener, tmp_path / "not-the-repo.py")
    result, stdout, _ = run_genome(src, "none")
    p = probes(stdout)
    assert result.sandbox == "none"
    assert p["secret"] == ["ok", None]
    assert set(p["env"][1]) <= EXPECTED_ENV


# ---------------------------------------------------------------- nothing left running

DAEMONS = """
import os, sys, time
MARK = {mark!r}
def sleeper(tag, env=None):
    args = [sys.executable, "-c", "import time; time.sleep(120)", MARK + tag]
    os.execv(sys.executable, args) if env is None else os.execve(sys.executable, args, env)
pid = os.fork()
if pid == 0:  # the classic daemon: fork, setsid, fork again, the middle process exits
    os.setsid()
    if os.fork() == 0:
        sleeper("-double")
    os._exit(0)
os.waitpid(pid, 0)
if os.fork() == 0:  # a setsid'd child that scrubbed its environment (no EVO_SLOT_TOKEN)
    os.setsid()
    sleeper("-scrubbed", env={{}})
time.sleep(0.5)
print("spawned", flush=True)
time.sleep({linger})
"""


@pytest.mark.parametrize("level", AVAILABLE)
def test_daemons_do_not_outlive_the_slot(run_genome, level):
    mark = f"evo-daemon-{uuid.uuid4().hex}"
    result, stdout, _ = run_genome(DAEMONS.format(mark=mark, linger=0), level)
    assert "spawned" in stdout
    assert result.reason == "no_submit"
    assert result.leftover_processes == 2
    assert processes_with(mark) == []


KILL_SUPERVISOR = DAEMONS.replace('print("spawned", flush=True)', """print("spawned", flush=True)
import signal
try:
    print("killing the supervisor", os.getppid(), flush=True)  # its death takes this process with it at once
    os.kill(os.getppid(), signal.SIGKILL)  # the supervisor: without it, who reaps the daemons?
except OSError as exc:
    print("could not kill the supervisor:", exc, flush=True)
time.sleep(1)""")


@pytest.mark.parametrize("level", AVAILABLE)
def test_daemons_do_not_outlive_the_slot_even_when_the_genome_kills_its_supervisor(run_genome, level):
    """Nothing of a slot survives it without the genome's cooperation: at `none` the orphans of the
    killed supervisor are re-parented to the runner (a child subreaper), which finds and kills them;
    under netns and bwrap they die with the slot's PID namespace."""
    mark = f"evo-daemon-{uuid.uuid4().hex}"
    result, stdout, _ = run_genome(KILL_SUPERVISOR.format(mark=mark, linger=0), level)
    assert "spawned" in stdout
    print(level, stdout.strip().splitlines()[-1], "escaped:", result.escaped_processes)
    assert result.status == "failed"
    assert processes_with(mark) == []
    if level == "none":
        assert "killing the supervisor" in stdout
        assert result.escaped_processes >= 2  # both daemons got away from it, and were caught here
    # dead processes re-parented to the runner are reaped by its janitor (run at every slot's start and end)
    time.sleep(0.5)
    sandbox.reap_orphans()
    zombies = [pid for pid in os.listdir("/proc") if pid.isdigit() and _is_zombie_child(pid)]
    assert zombies == [], [Path(f"/proc/{z}/stat").read_text()[:80] for z in zombies]


def _is_zombie_child(pid: str) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] == "Z" and int(fields[1]) == os.getpid()


@pytest.mark.parametrize("level", AVAILABLE)
def test_timeout_kills_the_genome_and_its_daemons(run_genome, level):
    mark = f"evo-daemon-{uuid.uuid4().hex}"
    result, stdout, _ = run_genome(DAEMONS.format(mark=mark, linger=120), level, budget_s=1.0, grace_s=1.0)
    assert "spawned" in stdout
    assert result.reason == "timeout"
    assert result.train_seconds < 10
    assert processes_with(mark) == []


@pytest.mark.parametrize("name", ["program.json", "weights.safetensors", "export_error.txt"])
def test_a_planted_link_in_the_work_dir_is_flagged_not_followed(run_genome, small_dataset, name):
    """A genome that links a file the harness reads to the manifest (or to another genome's artifact, whose
    path it can guess) must not get the harness to read it: the slot is flagged, nothing is followed."""
    src = f"""
    import json, os
    spec = json.load(open(os.environ["EVO_SLOT_SPEC"]))
    dataset = os.path.dirname(os.path.dirname(spec["train_path"]))
    os.symlink(os.path.join(dataset, "manifest.json"), {name!r})
    """
    result, _, _ = run_genome(src, AVAILABLE[0])
    assert (result.status, result.reason) == ("flagged", "artifact_link"), result
    assert name in result.detail
    manifest = json.loads((small_dataset.path / "manifest.json").read_text())
    assert manifest["canaries"]["val"][0] not in json.dumps(result.to_dict())


# ---------------------------------------------------------------- limits


@pytest.mark.parametrize("level", AVAILABLE)
def test_memory_cap_per_process(run_genome, level):
    result, _, _ = run_genome("x = bytearray(400 * 2**20)\n", level, memory_mb=200)
    assert result.status == "failed" and result.reason == "memory", result
    assert result.limits["memory_mb"] == 200


def test_a_memory_cap_too_small_for_torch_is_a_memory_failure(run_genome):
    """A script that imports torch gets torch and its export stack imported before it starts (a script
    that mentions neither torch nor gpt starts bare); under a cap too small for them it never runs."""
    for cap in (100, 250):  # torch aborts (std::bad_alloc) or fails to import (the starter says why)
        result, stdout, _ = run_genome("import torch\nprint('never runs')\n", AVAILABLE[0], name=f"small{cap}",
                                       memory_mb=cap)
        assert (result.status, result.reason) == ("failed", "memory"), result
        assert "never runs" not in stdout


def test_memory_cap_over_all_processes(run_genome):
    src = """
    import os, time
    for i in range(3):
        if os.fork() == 0:
            block = bytearray(150 * 2**20)  # zero-filled: resident
            time.sleep(60)
    time.sleep(60)
    """
    t = time.monotonic()
    result, _, _ = run_genome(src, AVAILABLE[0], memory_mb=300)
    assert result.reason == "memory" and "over memory_mb=300" in result.detail
    assert time.monotonic() - t < 20


def test_process_cap(run_genome):
    mark = f"evo-fork-{uuid.uuid4().hex}"
    src = f"""
    import os, sys, time
    for i in range(12):
        if os.fork() == 0:
            os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", {mark!r}])
    time.sleep(60)
    """
    result, _, _ = run_genome(src, "none", max_procs=5)
    assert result.reason == "process_limit", result
    assert processes_with(mark) == []


def test_disk_cap_on_the_work_dir(run_genome):
    src = """
    for i in range(3):
        with open(f"blob{i}.bin", "wb") as f:
            f.write(b"x" * 700_000)
    """
    result, _, _ = run_genome(src, AVAILABLE[0], disk_mb=1)
    assert result.reason == "disk_limit", result


def test_disk_cap_per_file(run_genome):
    result, _, _ = run_genome('open("big.bin", "wb").write(b"x" * 3 * 2**20)\n', AVAILABLE[0], disk_mb=1)
    assert result.reason == "disk_limit", result
    assert "File too large" in result.stderr_tail


# ---------------------------------------------------------------- static checks in the runner


def test_rejected_genome_costs_no_slot(run_genome):
    src = "import socket\nimport os\nkey = os.environ['OPENAI_API_KEY']\n"
    result, _, out = run_genome(src, "auto", static_checks=True)
    assert result.status == "failed" and result.reason == "rejected"
    assert "line 1" in result.detail and "line 3" in result.detail
    assert result.slot_seconds < 1.0 and result.train_seconds == 0.0
    assert not (out / "work").exists() and not (out / "stdout.txt").exists()  # no process was started
    rules = {(f["rule"], f["line"], f["severity"]) for f in result.static_findings}
    assert {("network", 1, "reject"), ("environ", 3, "reject")} <= rules
    assert json.loads((out / "result.json").read_text())["reason"] == "rejected"
    assert result.sandbox == AVAILABLE[0]


def test_warnings_are_recorded_and_do_not_reject(run_genome):
    result, stdout, _ = run_genome("print(eval('6 * 7'))\n", "auto", static_checks=True)
    assert result.reason == "no_submit" and "42" in stdout
    assert [(f["rule"], f["line"], f["severity"]) for f in result.static_findings] == [("exec_eval", 1, "warn")]


# ---------------------------------------------------------------- the honest genome


def _tiny(small_dataset, tmp_path, level):
    job = SlotJob(genome=str(REPO / "genomes" / "tiny_cpu.py"), dataset=str(small_dataset.path),
                  out_dir=str(tmp_path / f"tiny-{level}"), budget_s=2.0, grace_s=60.0, sandbox=level,
                  eval_tokens=2048, threads=2)
    result = run_slot(job)
    assert result.status == "ok", result.stderr_tail or result
    assert result.sandbox == sandbox.resolve_level(level)
    assert result.static_findings == []
    assert result.limits["memory_mb"] == sandbox.default_memory_mb()  # the default cap does not break torch
    assert result.leftover_processes == 0
    return result


def test_tiny_cpu_runs_ok_under_auto(small_dataset, tmp_path):
    _tiny(small_dataset, tmp_path, "auto")


@pytest.mark.slow
@pytest.mark.parametrize("level", [lv for lv in AVAILABLE if lv != AVAILABLE[0]])
def test_tiny_cpu_runs_ok_under_each_weaker_level(small_dataset, tmp_path, level):
    _tiny(small_dataset, tmp_path, level)
