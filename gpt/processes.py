"""Finding, watching and killing the processes of one slot, none of it on the genome's word.

The sandbox (gpt.sandbox) decides what a genome can see; this module makes sure nothing of a slot
outlives it and that its limits hold while it runs: the runner as a child subreaper, the scan of
/proc that finds every process of a slot (`SlotProcesses`), and the watchdog that polls their
memory, count, CPU seconds and the work dir's size (`Watchdog`). Linux only (/proc, prctl).
"""
from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpt.sandbox import Limits

TOKEN_ENV = "EVO_SLOT_TOKEN"  # the environment marker every process of a slot starts with
HELPER_NAMES = {"bwrap", "unshare", "evo-supervisor"}  # sandbox helpers: not counted against max_procs
WATCH_INTERVAL_S = 0.25
DISK_EVERY_S = 2.0


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
# held while the runner spawns a process and registers it, and while a scan tells orphans from the runner's
# own children: a process forked a moment ago is never taken for another slot's escaped orphan
SPAWN_LOCK = threading.Lock()
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


def spawn(cmd: list[str], **popen) -> "subprocess.Popen":
    """Start one of the runner's own processes (a sandboxed genome or scorer) and register it, under
    SPAWN_LOCK: no slot's scan can take it for an escaped orphan in between. Call it from a long-lived
    thread: the launcher's PR_SET_PDEATHSIG fires when the *thread* that forked it exits."""
    import subprocess

    with SPAWN_LOCK:
        proc = subprocess.Popen(cmd, **popen)
        register_child(proc.pid)
    return proc


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
    reaped_ticks: int = 0  # the CPU of its children that it waited for (cutime + cstime)


def _stat(pid: int | str) -> _Stat | None:
    text = _read(f"/proc/{pid}/stat").decode(errors="replace")
    try:
        f = text.rsplit(")", 1)[1].split()
        return _Stat(ppid=int(f[1]), sid=int(f[3]), state=f[0], cpu_ticks=int(f[11]) + int(f[12]), start=int(f[19]),
                     reaped_ticks=int(f[13]) + int(f[14]))
    except (IndexError, ValueError):
        return None


def _threads_live(pid: int | str) -> bool:
    """A zombie thread-group leader whose other threads still run (its main thread called pthread_exit):
    alive, and its stat line still sums the group's CPU. Dropping it hid a genome's training from the clock."""
    return len(_tasks(pid)) > 1


def _tasks(pid: int | str) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def _memory_status(pid: int | str) -> str:
    """/proc status text with the process's memory lines: a zombie leader has none of its own, so those of
    a live thread of its group (they share one address space)."""
    text = _read(f"/proc/{pid}/status").decode(errors="replace")
    if "RssAnon:" in text:
        return text
    other = next((t for t in _tasks(pid) if t != str(pid)), None)
    return _read(f"/proc/{pid}/task/{other}/status").decode(errors="replace") if other else text


def _memfds(pid: int | str) -> dict[tuple[int, int], int]:
    """(device, inode) -> bytes of each memfd the process holds open or has mapped (the larger of its allocated
    pages and its mapped ranges). A file written into a memfd and never touched through a mapping is in no
    process's RSS (and past RLIMIT_DATA), yet it takes the machine's memory; its fd may be closed once mapped."""
    found: dict[tuple[int, int], int] = {}
    maps = _read(f"/proc/{pid}/maps")
    for line in maps.decode(errors="replace").splitlines() if b"/memfd:" in maps else ():
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[5].startswith("/memfd:"):
            span, (major, minor) = fields[0].split("-"), fields[3].split(":")
            key = (os.makedev(int(major, 16), int(minor, 16)), int(fields[4]))
            found[key] = found.get(key, 0) + int(span[1], 16) - int(span[0], 16)
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:"):
                st = os.stat(f"/proc/{pid}/fd/{fd}")
                key = (st.st_dev, st.st_ino)
                found[key] = max(found.get(key, 0), st.st_blocks * 512)
        except OSError:
            continue
    return found


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
    tree_ticks: int = 0  # the most CPU the live processes and the children they reaped held at one scan

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
        """The slot's CPU so far, the larger of two lower bounds: each process's own time as last seen, and
        the live processes' own time plus that of the children they reaped. The second counts a child that
        lived and died between two scans (a DataLoader worker, say), which the first never sees."""
        return max(sum(self.cpu.values()), self.tree_ticks) / _TICKS

    def scan(self) -> dict[int, str]:
        """pid -> comm of every live process of the slot."""
        with SPAWN_LOCK:
            return self._scan()

    def _scan(self) -> dict[int, str]:
        marker = f"{TOKEN_ENV}={self.token}".encode()
        me = os.getpid()
        table = {}
        for entry in sorted(filter(str.isdigit, os.listdir("/proc")), key=int):
            if int(entry) != me:
                st = _stat(entry)
                if st is not None and st.state != "X" and (st.state != "Z" or _threads_live(entry)):
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
        # read in pid order, a parent before its children: a child reaped mid-scan is missed, never counted twice
        self.tree_ticks = max(self.tree_ticks, sum(table[pid].cpu_ticks + table[pid].reaped_ticks for pid in found))
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
        """(number of non-helper processes, MiB held: anonymous and shmem resident memory, plus every memfd a
        slot process holds open or has mapped, which is RAM whether its pages were touched or not)."""
        count, kb, memfds = 0, 0, {}
        for pid, comm in pids.items():
            if comm not in HELPER_NAMES:
                count += 1
            for line in _memory_status(pid).splitlines():
                if line.startswith(("RssAnon:", "RssShmem:")):
                    kb += int(line.split()[1])
            for key, size in _memfds(pid).items():  # one memfd seen from several processes counts once
                memfds[key] = max(memfds.get(key, 0), size)
        return count, (kb + sum(memfds.values()) // 1024) // 1024

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


def kill_group(pgid: int) -> None:
    """SIGKILL a whole process group (a slot's root process leads its own session)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


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
        self.cpu_samples: list[tuple[float, float]] = []  # (monotonic time, the slot's CPU seconds so far)
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)
        self.cpu_seconds = max(self.cpu_seconds, self.procs.cpu_seconds)

    def run(self) -> None:
        last_disk = time.monotonic()
        while not self._halt.wait(self.interval):
            count, mb = self.procs.usage(self.procs.scan())
            self.peak_mb, self.peak_procs = max(self.peak_mb, mb), max(self.peak_procs, count)
            self.cpu_seconds = self.procs.cpu_seconds
            self.cpu_samples.append((time.monotonic(), self.cpu_seconds))
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
