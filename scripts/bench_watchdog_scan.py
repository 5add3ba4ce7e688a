"""Cost of one watchdog scan (SlotProcesses.scan + usage, every 0.25 s in the runner while a slot trains) of a
process that has torch imported, this tree against gpt/processes.py at a base commit, alternating, 300 scans each.

    python scripts/bench_watchdog_scan.py BASE_COMMIT
"""
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import gpt.processes as new  # noqa: E402

base = Path(tempfile.mkdtemp()) / "base_processes.py"
base.write_bytes(subprocess.check_output(["git", "-C", str(REPO), "show", f"{sys.argv[1]}:gpt/processes.py"]))
spec = importlib.util.spec_from_file_location("base_processes", base)
old = importlib.util.module_from_spec(spec)
sys.modules["base_processes"] = old
spec.loader.exec_module(old)
child = subprocess.Popen([sys.executable, "-c", "import torch, time; torch.randn(1000,1000) @ torch.randn(1000,1000); time.sleep(120)"])
time.sleep(8)
procs = {"before": old.SlotProcesses("x", root_pid=child.pid), "after": new.SlotProcesses("x", root_pid=child.pid)}
times = {k: [] for k in procs}
for _ in range(300):
    for name, p in procs.items():
        t = time.perf_counter(); p.usage(p.scan()); times[name].append(time.perf_counter() - t)
child.kill()
for name, ts in times.items():
    print(f"{name}: median {statistics.median(ts) * 1e3:.3f} ms per scan (min {min(ts) * 1e3:.3f}, max {max(ts) * 1e3:.3f}), 300 scans")
print(f"ratio after/before: {statistics.median(times['after']) / statistics.median(times['before']):.2f}")
