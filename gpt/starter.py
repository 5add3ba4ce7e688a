"""The first code of every genome process, inside its sandbox: import what every genome imports, then
wait for the runner's word and run `genome.py` as `__main__`.

`python -m gpt.starter` is what the runner spawns in the slot's sandbox (gpt.training). A cold slot
says `go` at once; a warm slot (gpt.warm) is spawned while the previous genome is scored, so torch is
already imported when its genome arrives. Either way each genome gets a fresh process and sandbox,
and the harness clock starts at `go`, not at spawn. The runner writes the genome and the slot spec
before it says `go`; nothing of the genome runs before that. Anything else on stdin (end of input: the
runner discarded this process, or died) ends it without running anything.
"""
from __future__ import annotations

import os
import runpy
import sys

_ENV = dict(os.environ)  # the runner's environment for the genome, before torch's imports add to it

try:
    import numpy  # noqa: F401  (what every genome imports; the point of starting early)
    import torch  # noqa: F401

    from gpt import lab  # (gpt.artifact and safetensors with it)
    from gpt.protocol import CLOCK_FD_ENV

    lab._import_export_modules()  # what connect() would import on the genome's clock otherwise
except BaseException as exc:  # noqa: BLE001 -- under a small RLIMIT_DATA torch fails in odd ways
    sys.stderr.write(f"[evo-starter] the harness could not import torch in this slot "
                     f"({type(exc).__name__}: {exc}); torch and its export stack need about 400 MiB, so a memory "
                     "cap (memory_mb) below that cannot run any genome\n")
    raise SystemExit(1) from None

GO = "go"


def main() -> int:
    os.environ.clear()  # the genome gets exactly the environment the runner built (torch set a cache dir)
    os.environ.update(_ENV)
    os.write(int(os.environ[CLOCK_FD_ENV]), b"ready\n")  # the runner starts the slot's clocks at `go`, not before
    if sys.stdin.readline().strip() != GO:
        return 0
    null = os.open(os.devnull, os.O_RDONLY)  # the genome's stdin is empty, as in a cold `python genome.py`
    os.dup2(null, 0)
    os.close(null)
    sys.argv = ["genome.py"]  # sys.path[0] is the work dir already (`-m` puts the cwd first)
    runpy.run_path("genome.py", run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
