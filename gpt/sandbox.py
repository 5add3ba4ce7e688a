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
- processes: the watchdog counts the slot's processes (polling, every WATCH_INTERVAL_S: a
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
"""
from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import gpt
from gpt.errors import UserError

LEVELS = ("bwrap", "netns", "none")  # strongest first
REQUESTABLE = ("auto",) + LEVELS
TOKEN_ENV = "EVO_SLOT_TOKEN"
PROBE_TIMEOUT_S = 30.0
TMPFS_MB = 512  # size cap of the sandbox's /tmp and /dev/shm (tmpfs: counts as memory)
DEFAULT_DISK_MB = 8192
DEFAULT_MAX_PROCS = 64
MAX_WORK_FILES = 100_000
WATCH_INTERVAL_S = 0.25
DISK_EVERY_S = 2.0
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "passwd", "group", "nsswitch.conf",
             "hosts", "alternatives")
HELPER_NAMES = {"bwrap", "unshare", "evo-supervisor"}
# documentation a genome has no use for, which may hold copies of a corpus (Debian's python3-doc ships the
# sources of the built-in corpus; the stdlib's pydoc_data holds the language reference as text): never shown
UNSEEN_DOCS = ("/usr/share/doc", "/usr/share/man", "/usr/share/info", "/usr/share/help")  # sandbox helpers: not counted against max_procs

# The launcher runs outside the sandbox: die with the runner, set the rlimits, exec the sandbox tool
# (a launcher rather than preexec_fn, which is unsafe in the runner's threaded parent).
_LAUNCHER = r"""
import os, resource, sys
try:
    import ctypes
    ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG = SIGKILL: die with the runner
except Exception:
    pass
for kv in filter(None, sys.argv[1].split(",")):
    k, v = kv.split("=")
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

    def rlimits(self) -> dict[str, int]:
        out = {"CORE": 0}
        if self.memory_mb:
            out["DATA"] = self.memory_mb * 2**20
        if self.disk_mb:
            out["FSIZE"] = self.disk_mb * 2**20
        return out

    def describe(self) -> dict:
        return {"memory_mb": self.memory_mb or None, "disk_mb": self.disk_mb or None,
                "max_procs": self.max_procs or None, "max_files": self.max_files or None}


def launcher(limits: Limits) -> list[str]:
    """argv prefix that applies `limits` as rlimits, then execs the rest of the command line."""
    spec = ",".join(f"{k}={v}" for k, v in limits.rlimits().items())
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


def _unseen_docs() -> list[str]:
    import sysconfig

    dirs = list(UNSEEN_DOCS) + [os.path.join(sysconfig.get_paths()["stdlib"], "pydoc_data")]
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
    for d in _unseen_docs():
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


# ---------------------------------------------------------------- finding and killing slot processes


def _read(path: str, n: int = -1) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _pid_ns(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


_OWN_NS = _pid_ns("self")
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_RUNNER_CHILDREN: set[int] = set()  # processes this runner started itself (genome launchers, scorers)
_subreaper_lock = threading.Lock()
_is_subreaper = False


def become_subreaper() -> bool:
    """Make this process (the runner) a child subreaper: a slot's processes whose supervisor was
    killed are re-parented here instead of to init, so the runner can find them without their
    cooperation. Linux only; returns whether it worked."""
    global _is_subreaper
    with _subreaper_lock:
        if not _is_subreaper:
            try:
                import ctypes

                _is_subreaper = ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
            except (OSError, AttributeError):
                _is_subreaper = False
        return _is_subreaper


def reap_orphans() -> int:
    """Reap dead processes that reached the runner as subreaper and were not started by it: slot
    processes whose parents died after the slot's own clean-up. Processes the runner's code started in
    its own session are never touched. Returns how many were reaped."""
    me, my_sid, n = os.getpid(), os.getsid(0), 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(entry)
            if st and st.state == "Z" and st.ppid == me and st.sid != my_sid and int(entry) not in _RUNNER_CHILDREN:
                try:
                    n += os.waitpid(int(entry), os.WNOHANG)[0] != 0
                except ChildProcessError:
                    pass
    return n


def register_child(pid: int) -> None:
    _RUNNER_CHILDREN.add(pid)


def unregister_child(pid: int) -> None:
    _RUNNER_CHILDREN.discard(pid)


@dataclass(frozen=True)
class _Stat:
    ppid: int
    sid: int
    state: str
    cpu_ticks: int
    start: int


def _stat(pid: int | str) -> _Stat | None:
    text = _read(f"/proc/{pid}/stat").decode(errors="replace")
    try:
        f = text.rsplit(")", 1)[1].split()
        return _Stat(ppid=int(f[1]), sid=int(f[3]), state=f[0], cpu_ticks=int(f[11]) + int(f[12]), start=int(f[19]))
    except (IndexError, ValueError):
        return None


@dataclass
class SlotProcesses:
    """Finds the processes of one slot, none of it on the genome's word: descendants of the slot's
    root process, processes carrying the environment marker or living in a PID namespace seen with
    it, and orphans re-parented to the runner (as subreaper) after the slot started."""

    token: str
    root_pid: int | None = None
    namespaces: set = field(default_factory=set)
    members: set = field(default_factory=set)  # (pid, start time) of every process seen as the slot's
    adopted: set = field(default_factory=set)  # (pid, start time) found only as orphans the runner adopted
    cpu: dict = field(default_factory=dict)  # (pid, start time) -> CPU ticks last seen

    def __post_init__(self):
        root = _stat(self.root_pid) if self.root_pid else None
        self.since = root.start if root else 0
        self.my_sid = os.getsid(0)

    @property
    def escaped(self) -> int:
        """How many processes got away from their supervisor (only a genome that kills it can do that)."""
        return len(self.adopted)

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu.values()) / _TICKS

    def scan(self) -> dict[int, str]:
        """pid -> comm of every live process of the slot."""
        marker = f"{TOKEN_ENV}={self.token}".encode()
        me = os.getpid()
        table = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != me:
                st = _stat(entry)
                if st is not None and st.state not in ("Z", "X"):
                    table[int(entry)] = st
        found = set()
        for pid, st in table.items():
            if (pid, st.start) in self.members or pid == self.root_pid:
                found.add(pid)
                continue
            ns = _pid_ns(pid)
            if ns is None:
                continue
            if ns in self.namespaces or marker in _read(f"/proc/{pid}/environ").split(b"\0"):
                found.add(pid)
            elif (st.ppid == me and self.root_pid and st.start >= self.since and pid not in _RUNNER_CHILDREN
                  and st.sid != self.my_sid):
                found.add(pid)  # an orphan of a killed supervisor, re-parented to the runner
        grew = True
        while grew:  # everything descended from a slot process is the slot's
            extra = {pid for pid, st in table.items() if st.ppid in found and pid not in found}
            found |= extra
            grew = bool(extra)
        out = {}
        for pid in found:
            st = table[pid]
            self.members.add((pid, st.start))
            if st.ppid == me and pid not in _RUNNER_CHILDREN and pid != self.root_pid:
                self.adopted.add((pid, st.start))  # its supervisor is gone: it reached the runner as subreaper
            self.cpu[(pid, st.start)] = max(self.cpu.get((pid, st.start), 0), st.cpu_ticks)
            ns = _pid_ns(pid)
            if ns is not None and ns != _OWN_NS:
                self.namespaces.add(ns)
            out[pid] = _read(f"/proc/{pid}/comm").decode(errors="replace").strip()
        return out

    def usage(self, pids) -> tuple[int, int]:
        """(number of non-helper processes, summed anonymous+shmem resident MiB)."""
        count, kb = 0, 0
        for pid, comm in pids.items():
            if comm not in HELPER_NAMES:
                count += 1
            for line in _read(f"/proc/{pid}/status").decode(errors="replace").splitlines():
                if line.startswith(("RssAnon:", "RssShmem:")):
                    kb += int(line.split()[1])
        return count, kb // 1024

    def kill_all(self, timeout: float = 5.0) -> dict[int, str]:
        """Stop every slot process (so none can fork away), then SIGKILL them; returns {pid: comm} of those found."""
        seen: dict[int, str] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            new = {pid: comm for pid, comm in self.scan().items() if pid not in seen}
            if not new:
                break
            for pid in new:
                _signal(pid, signal.SIGSTOP)
            seen.update(new)
        for pid in seen:
            _signal(pid, signal.SIGKILL)
        for pid in seen:  # wait until they are gone (or zombies whose parent will reap them)
            while time.monotonic() < deadline and _pid_ns(pid) is not None and _alive(pid):
                time.sleep(0.01)
        self.reap()
        return seen

    def reap(self, patience: float = 1.0) -> None:
        """Slot processes re-parented to the runner (its subreaper) are its children now: reap the dead
        ones, or they stay zombies. A zombie is reaped only if it was seen in the slot with the same start
        time, or if it would have been adopted by `scan` (started after the slot, in a session of its
        own, not a process the runner started itself). A PID namespace's init dies only after all of its
        processes, so this waits up to `patience` seconds for members that are still exiting."""
        me = os.getpid()
        deadline = time.monotonic() + patience
        while True:
            dying = False
            for pid, start in list(self.members):
                st = _stat(pid)
                if st is None or st.start != start:
                    continue
                if st.state != "Z":
                    dying = True
                elif st.ppid == me and pid not in _RUNNER_CHILDREN:
                    _reap(pid)
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    st = _stat(entry)
                    if (st and st.state == "Z" and st.ppid == me and int(entry) not in _RUNNER_CHILDREN
                            and self.root_pid and st.start >= self.since and st.sid != self.my_sid):
                        _reap(int(entry))
            if not dying or time.monotonic() > deadline:
                return
            time.sleep(0.01)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid: int) -> bool:
    stat = _read(f"/proc/{pid}/stat").decode(errors="replace")
    return bool(stat) and stat.rsplit(")", 1)[-1].split()[:1] not in (["Z"], ["X"])


def dir_usage(path: Path, max_bytes: int = 0, max_files: int = 0) -> tuple[int, int]:
    """(total apparent bytes, number of entries) under `path`; stops early past either cap."""
    total = files = 0
    stack = [str(path)]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue
        with it:
            for e in it:
                files += 1
                try:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    else:
                        total += e.stat(follow_symlinks=False).st_size
                except OSError:
                    pass
                if (max_bytes and total > max_bytes) or (max_files and files > max_files):
                    return total, files
    return total, files


def disk_verdict(work: Path, limits: Limits) -> str | None:
    """A message if the work dir is over the disk caps, else None."""
    cap = limits.disk_mb * 2**20
    total, files = dir_usage(work, cap, limits.max_files)
    if limits.disk_mb and total > cap:
        return f"the work dir holds over {limits.disk_mb} MiB (disk_mb)"
    if limits.max_files and files > limits.max_files:
        return f"the work dir holds over {limits.max_files} files"
    return None


class Watchdog(threading.Thread):
    """Polls a running slot; on a breach records (reason, detail) and kills the whole slot."""

    def __init__(self, procs: SlotProcesses, limits: Limits, work: Path, on_breach=None,
                 interval: float = WATCH_INTERVAL_S):
        super().__init__(daemon=True, name="evo-slot-watchdog")
        self.procs, self.limits, self.work, self.interval = procs, limits, work, interval
        self.on_breach = on_breach or procs.kill_all
        self.breach: tuple[str, str] | None = None
        self.peak_mb = 0
        self.peak_procs = 0
        self.cpu_seconds = 0.0
        self.samples: list[tuple[float, float]] = []  # (monotonic time, the slot's CPU seconds so far)
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)
        self.cpu_seconds = max(self.cpu_seconds, self.procs.cpu_seconds)

    def cpu_before(self, t: float) -> float | None:
        """The slot's CPU seconds at monotonic time `t` (the first sample at or after it: an upper bound
        within one interval), None if there is no such sample."""
        after = [cpu for when, cpu in self.samples if when >= t]
        return after[0] if after else None

    def run(self) -> None:
        last_disk = time.monotonic()
        while not self._halt.wait(self.interval):
            count, mb = self.procs.usage(self.procs.scan())
            self.peak_mb, self.peak_procs = max(self.peak_mb, mb), max(self.peak_procs, count)
            self.cpu_seconds = self.procs.cpu_seconds
            self.samples.append((time.monotonic(), self.cpu_seconds))
            if self.limits.memory_mb and mb > self.limits.memory_mb:
                self._trip("memory", f"the slot's processes held {mb} MiB, over memory_mb={self.limits.memory_mb}")
            elif self.limits.max_procs and count > self.limits.max_procs:
                self._trip("process_limit", f"the slot ran {count} processes, over max_procs={self.limits.max_procs}")
            elif time.monotonic() - last_disk >= DISK_EVERY_S:
                last_disk = time.monotonic()
                msg = disk_verdict(self.work, self.limits)
                if msg:
                    self._trip("disk_limit", msg)
            if self.breach:
                return

    def _trip(self, reason: str, detail: str) -> None:
        self.breach = (reason, detail)
        self.on_breach()
