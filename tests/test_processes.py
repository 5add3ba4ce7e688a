"""The slot's process table (gpt.processes) on real processes: what it must not lose sight of."""
from __future__ import annotations

import subprocess
import sys
import time
import uuid

from gpt.processes import TOKEN_ENV, SlotProcesses

BURNS_AFTER_MAIN_EXITS = """
import ctypes, threading, time
held = bytearray(300 * 2**20)  # resident: every page written
for i in range(0, len(held), 4096):
    held[i] = 1
def burn():
    end = time.time() + 30
    while time.time() < end:
        pass
threading.Thread(target=burn).start()
time.sleep(0.3)
ctypes.CDLL(None).pthread_exit(None)  # the leader becomes a zombie; the thread keeps running
"""


def test_a_process_whose_main_thread_exited_is_still_seen_and_its_cpu_counted():
    """A genome whose main thread calls pthread_exit shows state Z while it trains on in another thread:
    it must stay in the slot's table, its CPU and memory counted (it once hid 9 s of training before connect
    and all of its memory from the watchdog)."""
    token = uuid.uuid4().hex
    proc = subprocess.Popen([sys.executable, "-c", BURNS_AFTER_MAIN_EXITS], env={TOKEN_ENV: token, "PATH": "/usr/bin"})
    try:
        procs = SlotProcesses(token, root_pid=proc.pid)
        time.sleep(2.5)
        state = open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()[0]
        assert state == "Z"  # what /proc shows of it
        assert proc.pid in procs.scan()
        time.sleep(1.0)
        procs.scan()
        assert procs.cpu_seconds > 1.5, procs.cpu_seconds
        assert procs.usage(procs.scan())[1] >= 300  # its memory too (the leader's own status has none)
    finally:
        proc.kill()
        proc.wait()
