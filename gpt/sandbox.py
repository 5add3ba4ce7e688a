"""Sandboxes and resource limits for genome processes.

A genome is untrusted code. The slot runner starts it through one of these levels:

    level    how                                  what it enforces (see docs/integrity.md)
    bwrap    bubblewrap: user, pid, net, ipc,     read-only system (only /usr, /lib*, a few /etc files,
             uts, mount namespaces; every          the Python prefix and venv and the `gpt` package),
             capability dropped                    only the work dir writable, only the train split of
                                                   the dataset readable, no network, own PID namespace,
                                                   new /proc, minimal /dev, size-capped tmpfs /tmp
    netns    util-linux unshare: user, net, pid,  no network, own PID namespace; NO file-system
             ipc, uts, mount namespaces; setpriv  isolation (the genome reads and writes what the
             drops every capability               harness user can)
    none     a plain subprocess                   nothing but the limits below

`auto` picks the strongest level that actually works on this machine; each level is
probed once per process (a real sandboxed `python -c ...`) and the answer is cached.

Limits, every level (enforced by the harness, not by the genome's goodwill):
- memory: RLIMIT_DATA per process (it counts heap and private writable mappings, not the
  large PROT_NONE reservations that make RLIMIT_AS break torch), plus a watchdog that sums
  the anonymous resident memory of all the slot's processes and kills the slot past the cap;
- files: RLIMIT_FSIZE per file, a watchdog on the total size and the file count of the
  work directory, and a final check of both after the run; RLIMIT_CORE 0;
- processes: the watchdog counts the slot's processes (polling, every processes.WATCH_INTERVAL_S: a
  fork bomb can overshoot the cap for up to one interval before the whole slot is killed);
- leftovers: the genome runs under a small supervisor (`_SUPERVISOR`) that is its parent and
  a child subreaper, so every process the genome leaves behind (double-forked, setsid'd, with
  a scrubbed environment) is re-parented to it; when the genome exits, or on SIGTERM, it
  stops and kills them all. Under bwrap and netns the PID namespace also dies with its init.
  As a backstop the runner kills every process that carries the slot's environment marker
  (EVO_SLOT_TOKEN) or lives in the slot's PID namespace.

There are no cgroups here: cgroup v2 with delegated memory/pids controllers would give hard
kernel limits, but it is not what most machines that run evo offer (the development machine
has cgroup v1 owned by its host), so the limits above are the portable floor.

This module builds the command lines (levels, rlimits, the supervisor) and probes which levels
work; the watchdog, the scan that finds a slot's processes and the runner's subreaper are in
gpt.processes (their names are importable from here too).
"""
from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import gpt
from gpt.errors import UserError
from gpt.processes import (  # noqa: F401  (re-exported: the runner's and the tests' names for them)
    HELPER_NAMES, TOKEN_ENV, SlotProcesses, Watchdog, become_subreaper, disk_verdict, dir_usage, reap_orphans,
    register_child, unregister_child)

LEVELS = ("bwrap", "netns", "none")  # strongest first
REQUESTABLE = ("auto",) + LEVELS
PROBE_TIMEOUT_S = 30.0
TMPFS_MB = 512  # size cap of the sandbox's /tmp and /dev/shm (tmpfs: counts as memory)
DEFAULT_DISK_MB = 8192
DEFAULT_MAX_PROCS = 64
MAX_WORK_FILES = 100_000
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "passwd", "group", "nsswitch.conf",
             "hosts", "alternatives")
# documentation a genome has no use for, which may hold copies of a corpus (Debian's python3-doc ships the
# sources of the built-in corpus; the stdlib's pydoc_data holds the language reference as text): never shown
UNSEEN_DOCS = ("/usr/share/doc", "/usr/share/man", "/usr/share/info", "/usr/share/help")

# The launcher runs outside the sandbox: die with the runner, set the rlimits, pin the slot's cores, exec the
# sandbox tool (a launcher rather than preexec_fn, which is unsafe in the runner's threaded parent).
_LAUNCHER = r"""
import os, resource, sys
try:
    import ctypes
    ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG = SIGKILL: die with the runner
except Exception:
    pass
for kv in filter(None, sys.argv[1].split(",")):
    k, v = kv.split("=")
    if k == "CPUS":  # every process of the slot inherits the mask: threads beyond the slot's cores share them
        os.sched_setaffinity(0, [int(c) for c in v.split("+")])
        continue
    n = getattr(resource, "RLIMIT_" + k)
    hard = resource.getrlimit(n)[1]
    v = int(v) if hard == resource.RLIM_INFINITY else min(int(v), hard)
    resource.setrlimit(n, (v, v))
os.execvp(sys.argv[2], sys.argv[2:])
"""

# The supervisor runs inside the sandbox, as the genome's parent and a child subreaper: every
# process the genome leaves behind (double-forked, setsid'd, environment scrubbed) is re-parented
# to it; when the genome exits (or on SIGTERM) it stops and kills them all, reaps, and reports.
_SUPERVISOR = r"""
import ctypes, os, signal, sys, time
libc = ctypes.CDLL(None)
libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
libc.prctl(15, b"evo-supervisor", 0, 0, 0)  # PR_SET_NAME
pid = os.fork()
if pid == 0:
    try:
        libc.prctl(1, 9, 0, 0, 0)  # the genome dies with its supervisor
        os.execvp(sys.argv[1], sys.argv[1:])
    finally:
        os._exit(127)
def stop(*_):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass

signal.signal(signal.SIGTERM, stop)
try:
    status = os.waitpid(pid, 0)[1]
except ChildProcessError:
    status = 0
me = str(os.getpid())

def children():
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open("/proc/%s/stat" % p) as f:
                    st = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if st[1] == me and st[0] not in ("Z", "X"):
                out.append(int(p))
    return out

killed = set()
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    kids = children()
    if not kids:
        break
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for k in kids:
            try:
                os.kill(k, sig)
            except OSError:
                pass
    killed.update(kids)
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break
    time.sleep(0.005)
if killed:
    sys.stderr.write("\n[evo-supervisor] killed %d process(es) the genome left running\n" % len(killed))
code = os.waitstatus_to_exitcode(status)
sys.exit(128 - code if code < 0 else code)
"""


def default_memory_mb() -> int:
    """The default per-slot memory cap: min(75% of RAM, RAM - 2 GiB), at least 1 GiB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError):
        return 8192
    return max(1024, min(int(total * 0.75), total - 2048))


@dataclass(frozen=True)
class Limits:
    """Resource caps of one slot; 0 means no cap."""

    memory_mb: int = 0
    disk_mb: int = DEFAULT_DISK_MB
    max_procs: int = DEFAULT_MAX_PROCS
    max_files: int = MAX_WORK_FILES
    cpus: tuple[int, ...] = ()  # the cores the slot's processes may run on; (): wherever the runner's may

    def rlimits(self) -> dict[str, int]:
        out = {"CORE": 0}
        if self.memory_mb:
            out["DATA"] = self.memory_mb * 2**20
        if self.disk_mb:
            out["FSIZE"] = self.disk_mb * 2**20
        return out

    def describe(self) -> dict:
        return {"memory_mb": self.memory_mb or None, "disk_mb": self.disk_mb or None,
                "max_procs": self.max_procs or None, "max_files": self.max_files or None,
                "cpus": list(self.cpus) or None}


def launcher(limits: Limits) -> list[str]:
    """argv prefix that applies `limits` as rlimits and a CPU affinity, then execs the rest of the command line."""
    spec = ",".join([f"{k}={v}" for k, v in limits.rlimits().items()] +
                    [f"CPUS={'+'.join(map(str, limits.cpus))}"] * bool(limits.cpus))
    return [sys.executable, "-I", "-S", "-c", _LAUNCHER, spec]


def supervisor() -> list[str]:
    """argv prefix that runs the rest of the command line under the subreaper supervisor."""
    return [sys.executable, "-I", "-S", "-c", _SUPERVISOR]


# ---------------------------------------------------------------- what the genome needs to see


@dataclass(frozen=True)
class Exposure:
    """What a sandboxed genome may touch, at its host paths."""

    work: Path  # read-write
    read_files: tuple[Path, ...] = ()  # read-only single files (the slot spec, the train split)
    hide_dirs: tuple[Path, ...] = ()  # covered by an empty tmpfs first (the dataset folder, the corpus)
    gpu: bool = False
    read_dirs: tuple[Path, ...] = ()  # read-only folders (the scorer's dataset and the artifact's work dir)


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def python_dirs() -> list[Path]:
    """Directories the genome's Python needs read-only: prefixes, site-packages of torch/numpy, `gpt`."""
    dirs = [Path(p) for p in {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix}]
    dirs.append(Path(os.path.realpath(sys.executable)).parent)
    for pkg in ("torch", "numpy"):
        d = _package_dir(pkg)
        if d is not None:
            dirs.append(d.parent)  # its site-packages
    dirs.append(Path(gpt.__file__).resolve().parent)  # only the `gpt` package, not the project
    out: list[Path] = []
    for d in sorted({p.resolve() for p in dirs if p.exists()}, key=lambda p: len(p.parts)):
        if d == Path("/") or str(d).startswith("/usr/") or any(d == o or o in d.parents for o in out):
            continue
        out.append(d)
    return out


def unseen_docs() -> list[str]:
    """UNSEEN_DOCS and every Python's pydoc_data the sandbox can see: the running interpreter's, and the
    system's (Debian's /usr/lib/python3.X holds the language reference as text whichever Python runs)."""
    import sysconfig

    found = {os.path.join(sysconfig.get_paths()["stdlib"], "pydoc_data")}
    for root in {sys.prefix, sys.base_prefix, "/usr", "/usr/local"}:
        found.update(glob.glob(os.path.join(root, "lib", "python3*", "pydoc_data")))
    dirs = list(UNSEEN_DOCS) + sorted(found)
    return [d for d in dirs if os.path.isdir(d)]


def _python_aliases() -> list[tuple[Path, Path]]:
    """(target, literal) for a Python prefix or executable dir reached through a symlink: the genome's
    interpreter is started by its literal path, so that path must exist in the sandbox too."""
    pairs = []
    for p in {sys.prefix, sys.base_prefix, os.path.dirname(sys.executable)}:
        literal = Path(os.path.abspath(p))
        if literal.exists() and literal.resolve() != literal:
            pairs.append((literal.resolve(), literal))
    return sorted(pairs, key=lambda pair: len(pair[1].parts))


def _bwrap_features() -> frozenset:
    """Options of the installed bwrap that vary between versions (--size: 0.7, --disable-userns: 0.8)."""
    try:
        text = subprocess.run(["bwrap", "--help"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S).stdout
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    return frozenset(opt for opt in ("--size", "--disable-userns") if opt in text)


def _bwrap_args(exposure: Exposure, variant: dict) -> list[str]:
    features = variant.get("features", frozenset())
    a = ["bwrap", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
         "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if variant.get("userns"):
        a += ["--unshare-user"]
        if "--disable-userns" in features:  # no nested user namespaces inside the sandbox
            a += ["--disable-userns"]
    size = ["--size", str(TMPFS_MB * 2**20)] if "--size" in features else []
    a += ["--ro-bind", "/usr", "/usr"]
    for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(d):
            a += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            a += ["--ro-bind", d, d]
    for f in ETC_FILES:
        a += ["--ro-bind-try", f"/etc/{f}", f"/etc/{f}"]
    a += ["--proc", "/proc", "--dev", "/dev"] + size + ["--tmpfs", "/dev/shm"] + size + ["--tmpfs", "/tmp"]
    if exposure.gpu:  # best effort, untested: NVIDIA device nodes and the sysfs the driver reads
        for dev in sorted(glob.glob("/dev/nvidia*")) + sorted(glob.glob("/dev/dri/*")):
            a += ["--dev-bind", dev, dev]
        a += ["--ro-bind-try", "/sys", "/sys"]
    else:
        a += ["--ro-bind-try", "/sys/devices/system/cpu", "/sys/devices/system/cpu"]
    for d in python_dirs():
        a += ["--ro-bind", str(d), str(d)]
    for target, literal in _python_aliases():
        a += ["--ro-bind", str(target), str(literal)]
    for d in unseen_docs():
        a += ["--tmpfs", d, "--remount-ro", d]
    for d in exposure.hide_dirs:
        a += (["--size", "65536"] if size else []) + ["--tmpfs", str(d)]
    for f in exposure.read_files:
        a += ["--ro-bind", str(f), str(f)]
    for d in exposure.read_dirs:
        a += ["--ro-bind", str(d), str(d)]
    for d in exposure.hide_dirs:
        a += ["--remount-ro", str(d)]
    a += ["--bind", str(exposure.work), str(exposure.work), "--remount-ro", "/dev", "--remount-ro", "/",
          "--chdir", str(exposure.work), "--"]
    return a


def _netns_args(userns: bool) -> list[str]:
    a = ["unshare"]
    if userns:
        a += ["--user", "--map-root-user"]
    a += ["--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc", "--"]
    if shutil.which("setpriv"):  # drop every capability, so the genome cannot undo the namespaces
        a += ["setpriv", "--bounding-set", "-all", "--inh-caps", "-all", "--no-new-privs", "--"]
    elif not userns:
        raise _Unusable("without a user namespace, netns needs setpriv (util-linux) to drop capabilities")
    return a


class _Unusable(Exception):
    pass


# ---------------------------------------------------------------- probing


_probe_lock = threading.Lock()
_probed: dict[str, tuple[dict | None, str]] = {}  # level -> (variant or None, why not)


def _probe_bwrap() -> tuple[dict | None, str]:
    if not shutil.which("bwrap"):
        return None, "bubblewrap is not installed"
    errors = []
    with tempfile.TemporaryDirectory(prefix="evo-probe-") as tmp:
        t = Path(tmp)
        (t / "work").mkdir()
        (t / "data").mkdir()
        (t / "data" / "f").write_text("x")
        exposure = Exposure(work=t / "work", read_files=(t / "data" / "f",), hide_dirs=(t / "data",))
        features = _bwrap_features()
        for userns in (True, False):
            variant = {"userns": userns, "features": features}
            cmd = _bwrap_args(exposure, variant) + [sys.executable, "-S", "-c", "open('f','w').write('ok')"]
            err = _run_probe(cmd, cwd=t / "work")
            if err is None and (t / "work" / "f").exists():
                return variant, ""
            errors.append(err or "the probe could not write its work dir")
    return None, "bubblewrap is installed but cannot create its sandbox here: " + " / ".join(errors)


def _probe_netns() -> tuple[dict | None, str]:
    if not shutil.which("unshare"):
        return None, "util-linux unshare is not installed"
    errors = []
    for userns in (True, False):
        if not userns and os.geteuid() != 0:
            continue
        try:
            cmd = _netns_args(userns) + [sys.executable, "-S", "-c", "pass"]
        except _Unusable as exc:
            errors.append(str(exc))
            continue
        err = _run_probe(cmd, cwd=Path("/"))
        if err is None:
            return {"userns": userns}, ""
        errors.append(err)
    return None, "unshare cannot create the namespaces here: " + " / ".join(errors)


def _run_probe(cmd: list[str], cwd: Path) -> str | None:
    """Run a probe command; its helpers are watched while it runs, so that any the runner adopts as
    subreaper (bwrap's namespace init) is reaped rather than left a zombie."""
    try:
        p = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8"})
    except OSError as exc:
        return str(exc)
    procs = SlotProcesses("probe", root_pid=p.pid)
    try:
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        while p.poll() is None and time.monotonic() < deadline:
            procs.scan()
            time.sleep(0.005)
        if p.poll() is None:
            procs.kill_all()
            p.kill()
            return f"the probe took over {PROBE_TIMEOUT_S:g} s"
        _, stderr = p.communicate()
    finally:
        p.wait()
        procs.reap()
    if p.returncode != 0:
        return (stderr.strip().splitlines() or [f"exit code {p.returncode}"])[-1]
    return None


def probe(level: str) -> tuple[dict | None, str]:
    """(variant, "") if `level` works on this machine, else (None, why). Cached per process."""
    with _probe_lock:
        if level not in _probed:
            if level == "bwrap":
                _probed[level] = _probe_bwrap()
            elif level == "netns":
                _probed[level] = _probe_netns()
            elif level == "none":
                _probed[level] = ({}, "")
            else:
                raise UserError(f"unknown sandbox level {level!r}; choose one of {', '.join(REQUESTABLE)}")
        return _probed[level]


def reset_probe_cache() -> None:
    with _probe_lock:
        _probed.clear()


def available_levels() -> list[str]:
    """Levels that work on this machine, strongest first ('none' always works)."""
    return [lv for lv in LEVELS if probe(lv)[0] is not None]


FIXES = {
    "bwrap": "install bubblewrap (apt-get install bubblewrap / dnf install bubblewrap); in a container, "
             "allow user namespaces (e.g. docker run --security-opt seccomp=unconfined --security-opt "
             "apparmor=unconfined, or sysctl kernel.unprivileged_userns_clone=1); or use sandbox='auto'",
    "netns": "install util-linux (unshare, setpriv) and allow user namespaces (sysctl user.max_user_namespaces > 0); "
             "or use sandbox='auto'",
}


def resolve_level(requested: str) -> str:
    """The level a slot runs at: `auto` -> the strongest available; a named level must be available."""
    if requested not in REQUESTABLE:
        raise UserError(f"unknown sandbox level {requested!r}; choose one of {', '.join(REQUESTABLE)}")
    if requested == "auto":
        return available_levels()[0]
    variant, why = probe(requested)
    if variant is None:
        raise UserError(f"sandbox level {requested!r} is not available on this machine ({why}); "
                        f"fix: {FIXES.get(requested, '')}")
    return requested


def wrap_command(level: str, argv: list[str], exposure: Exposure, limits: Limits, supervise: bool = True) -> list[str]:
    """The full command line that runs `argv` under `level` with `limits` (and, for a genome, the supervisor)."""
    variant, why = probe(level)
    if variant is None:
        raise UserError(f"sandbox level {level!r} is not available ({why}); fix: {FIXES.get(level, '')}")
    if level == "bwrap":
        inner = _bwrap_args(exposure, variant)
    elif level == "netns":
        inner = _netns_args(variant["userns"])
    else:
        inner = []
    return launcher(limits) + inner + (supervisor() if supervise else []) + list(argv)
