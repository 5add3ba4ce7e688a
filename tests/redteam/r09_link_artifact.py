"""RED TEAM - gaming catalog row 9: borrowing another genome's artifact through a planted link.

What it tries: a genome knows its own work dir, and evo names slot dirs predictably
(<run>/evals/<eval id>-<attempt>/work), so the artifact of an earlier, better genome is at a
guessable path even where it cannot be listed. It symlinks its program.json and weights.safetensors to the guessed
artifact of evaluation 1 (and, failing that, hard-links it) and exits without training, hoping
the harness follows the link and scores the other genome's model as its own.
What evo must produce: status flagged, reason `artifact_link` (the runner lstat()s every file
it reads from the work dir after all the slot's processes are dead and never follows a link).
"""
import json
import os

work = os.getcwd()
evals = os.path.dirname(os.path.dirname(work))
report = {}
for name in ("program.json", "weights.safetensors"):
    target = os.path.join(evals, "00001-1", "work", name)
    report[name] = {"target": target, "target_visible": os.path.exists(target)}
    try:
        os.link(target, name)
        report[name]["planted"] = "hard link"
    except OSError as exc:
        report[name]["hard_link"] = f"{type(exc).__name__}: {exc}"
        os.symlink(target, name)
        report[name]["planted"] = "symlink"
print("REDTEAM " + json.dumps(report))
