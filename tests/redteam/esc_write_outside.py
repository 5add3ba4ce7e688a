"""RED TEAM - sandbox escape: writing outside the genome's directory.

What it tries: to leave files where the harness or a later slot will find them: a host
directory the test names (OUTSIDE, written here by the test), the project root (found from
the gpt package), the host's /tmp, root's home, the slot dir above its work dir, the dataset
folder (found from the train split's path in /proc/self/maps once lab has mapped it) and the
Python site-packages (a .pth file would run code in every later Python process).
Prints `REDTEAM {json}` with each outcome, then exits without training.
What evo must produce: static checks on: rejected (`path`, `lab_private`). Static checks
off, under bwrap: none of those files exists on the host afterwards (read-only mounts, or a
throw-away tmpfs inside the sandbox). The slot fails with no_submit.
"""
import json
import os
import sysconfig

from gpt import lab

OUTSIDE = ""  # set by the test: a directory on the host
MARK = "evo-redteam-escaped"
run = lab.connect()
train = next(line.split()[-1] for line in open("/proc/self/maps") if line.rstrip().endswith("train.bin"))
targets = {
    "outside": os.path.join(OUTSIDE, MARK + ".txt"),
    "repo": os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(lab.__file__))), MARK + ".txt"),
    "host_tmp": os.path.join("/tmp", MARK + ".txt"),
    "root_home": os.path.join(os.path.expanduser("~root"), MARK + ".txt"),
    "slot_dir": os.path.join(os.path.dirname(os.getcwd()), MARK + ".txt"),
    "dataset": os.path.join(os.path.dirname(os.path.dirname(train)), MARK + ".txt"),
    "site_packages": os.path.join(sysconfig.get_paths()["purelib"], MARK + ".pth"),
}
report = {"targets": targets}
for name, path in targets.items():
    try:
        with open(path, "w") as f:
            f.write("import os  # planted by a genome\n")
        report[name] = "ok"
    except Exception as exc:
        report[name] = f"{type(exc).__name__}: {exc}"
print("REDTEAM " + json.dumps(report))
