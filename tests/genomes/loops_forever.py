"""Fixture genome: ignores run.time_left() and never ends; leaves children running.

Before anything slow it starts two children whose command lines carry its working
directory as a marker: one in its own process group, one in a new session (setsid'd, as a
daemon would). It records their pids in children.json, then connects and sleeps forever.
"""
import json
import os
import subprocess
import sys
import time

marker = os.getcwd()
child = [sys.executable, "-c", "import time; time.sleep(600)", marker]
same_group = subprocess.Popen(child)
new_session = subprocess.Popen(child, start_new_session=True)
with open("children.json", "w") as f:
    json.dump({"same_group": same_group.pid, "new_session": new_session.pid, "marker": marker}, f)

from gpt import lab  # noqa: E402  (after the children: torch takes seconds to import)

run = lab.connect()
print("looping forever, time_left ignored", flush=True)
while True:
    time.sleep(0.1)
