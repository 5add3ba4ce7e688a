"""The first code of every genome process, inside its sandbox: import what every genome imports, then
wait for the runner's word and run `genome.py` as `__main__`.

`python -m gpt.starter` is what the runner spawns in the slot's sandbox (gpt.training). A cold slot
says `go` at once; a warm slot (gpt.warm) is spawned while the previous genome is scored, so torch is
already imported when its genome arrives. Either way each genome gets a fresh process and sandbox,
and the harness clock starts at `go`, not at spawn. The starter says `ready` on the clock pipe when
its imports are done; the runner writes the genome and the slot spec and then says `go`; nothing of
the genome runs before that. Anything else on stdin (end of input: the runner discarded this process,
or died) ends it without running anything. `--bare` skips the imports: the runner asks for it for a
cold script that imports neither torch nor gpt (nothing to gain from them).
"""
from __future__ import annotations

import os
import runpy
import sys

from gpt.protocol import CLOCK_FD_ENV

GO = "go"
FAILED = "[evo-starter] the harness could not import torch"  # the runner reads it as a memory failure


def _preload() -> None:
    """torch, numpy and gpt.lab with torch.export's machinery: what connect() would import on the
    genome's clock otherwise. Under a small RLIMIT_DATA torch fails in odd ways: say so plainly."""
    saved = dict(os.environ)
    try:
        import numpy  # noqa: F401
        import torch  # noqa: F401

        from gpt import lab

        lab._import_export_modules()
    except BaseException as exc:  # noqa: BLE001
        sys.stderr.write(f"{FAILED} in this slot ({type(exc).__name__}: {exc}); torch and its export stack "
                         "need about 400 MiB, so a memory cap (memory_mb) below that cannot run any genome\n")
        raise SystemExit(1) from None
    os.environ.clear()  # the genome gets exactly the environment the runner built (torch set a cache dir)
    os.environ.update(saved)


def main() -> int:
    if "--bare" not in sys.argv[1:]:
        _preload()
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
