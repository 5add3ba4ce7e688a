"""Screenshots of a run's TensorBoard dashboards (scalars, custom scalars, HParams, images) for the docs.

    python scripts/tb_screenshots.py RUN_DIR [--out docs/images] [--port 6123]

Starts `tensorboard --logdir RUN_DIR/tb` on 127.0.0.1, waits until it has loaded the run, saves each
dashboard with headless Chromium (Debian: `apt-get install chromium`) as tensorboard-<name>.png, copies
RUN_DIR/progress.png next to them, and stops TensorBoard. Pictures over --max-kb are reduced to 256
colors. Needs no network: TensorBoard serves its frontend from the installed package.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

# the dashboards, as TensorBoard's URL fragments name them
DASHBOARDS = {"scalars": "scalars", "custom-scalars": "custom_scalars", "hparams": "hparams", "images": "images"}
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    sys.exit("no Chromium found: install it (Debian: apt-get install -y chromium)")


def start_tensorboard(logdir: Path, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port),
           "--host", "127.0.0.1", "--reload_interval", "1"]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_for_runs(port: int, server: subprocess.Popen, timeout: float = 90.0) -> list[str]:
    """Poll TensorBoard until it answers and lists the run's event directories."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"tensorboard exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5) as response:
                runs = json.loads(response.read())
            if runs:
                return runs
        except OSError:
            pass
        time.sleep(1.0)
    sys.exit(f"tensorboard on port {port} listed no runs within {timeout:.0f} s")


def screenshot(browser: str, url: str, path: Path, size: tuple[int, int], wait_ms: int) -> None:
    """One page, rendered by headless Chromium after `wait_ms` of (virtual) time for its scripts."""
    with tempfile.TemporaryDirectory(prefix="tb-shot-") as profile:
        cmd = [browser, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
               f"--virtual-time-budget={wait_ms}", f"--screenshot={path}", url]
        if os.geteuid() == 0:
            cmd.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        subprocess.run(cmd, check=True, capture_output=True, timeout=wait_ms / 1000 + 120)
    if not path.is_file():
        sys.exit(f"chromium wrote no screenshot of {url}")


def shrink(path: Path, max_kb: int) -> int:
    """Reduce a PNG over max_kb to an adaptive 256-color palette; returns its size in bytes."""
    if path.stat().st_size > max_kb * 1024:
        from PIL import Image

        with Image.open(path) as image:
            reduced = image.convert("RGB").quantize(colors=256)
        reduced.save(path, optimize=True)
    return path.stat().st_size


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "images")
    parser.add_argument("--port", type=int, default=6123)
    parser.add_argument("--size", default="1400,900", help="browser window WIDTH,HEIGHT")
    parser.add_argument("--wait-ms", type=int, default=15000, help="page time for TensorBoard's scripts")
    parser.add_argument("--max-kb", type=int, default=300)
    args = parser.parse_args(argv)
    logdir = args.run_dir / "tb"
    if not logdir.is_dir():
        sys.exit(f"{logdir} does not exist: give a run directory that `evo run` wrote")
    browser, size = find_browser(), tuple(int(v) for v in args.size.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    log = Path(tempfile.gettempdir()) / f"tb_screenshots-{args.port}.log"
    server = start_tensorboard(logdir, args.port, log)
    try:
        runs = wait_for_runs(args.port, server)  # its output goes to `log`
        print(f"tensorboard on port {args.port}: {len(runs)} runs")
        for name, fragment in DASHBOARDS.items():
            path = args.out / f"tensorboard-{name}.png"
            screenshot(browser, f"http://127.0.0.1:{args.port}/#{fragment}", path, size, args.wait_ms)
            print(f"{path}: {shrink(path, args.max_kb) // 1024} KB")
    finally:
        server.terminate()
        server.wait(timeout=30)
    progress = args.run_dir / "progress.png"
    if progress.is_file():
        shutil.copyfile(progress, args.out / "progress.png")
        print(f"{args.out / 'progress.png'}: {shrink(args.out / 'progress.png', args.max_kb) // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
