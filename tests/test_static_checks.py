"""gpt.static_checks: every rule rejects (or warns) where it should, with the right line, and honest
genomes get no finding."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gpt.static_checks import RULES, check_source, format_findings, rejected

REPO = Path(__file__).resolve().parents[1]

# (source, rule, severity, line of the finding); line 1 is the first line of the dedented source
CASES = [
    # syntax
    ("def f(:\n    pass\n", "syntax", "reject", 1),
    # network
    ("import socket\n", "network", "reject", 1),
    ("import urllib.request\n", "network", "reject", 1),
    ("from http.client import HTTPConnection\n", "network", "reject", 1),
    ("import requests as r\n", "network", "reject", 1),
    ("import torch\ntorch.distributed.init_process_group('gloo')\n", "network", "reject", 2),
    ("import torch\nm = torch.hub.load('a/b', 'c')\n", "network", "reject", 2),
    # processes
    ("import subprocess\n", "process", "reject", 1),
    ("import os\nos.system('ls')\n", "process", "reject", 2),
    ("import os\nos.execv('/bin/sh', ['sh'])\n", "process", "reject", 2),
    ("import os\nos.posix_spawn('x', [], {})\n", "process", "reject", 2),
    ("import os\nif os.fork() == 0:\n    pass\n", "process", "reject", 2),
    ("import os\nos.setsid()\n", "process", "reject", 2),
    ("import os as o\no.popen('ls')\n", "process", "reject", 2),
    ("from os import system\n", "process", "reject", 1),
    ("import pty\n", "process", "reject", 1),
    ("import multiprocessing as mp\n", "process", "reject", 1),
    ("from concurrent.futures import ProcessPoolExecutor\n", "process", "reject", 1),
    ("import os\nos.kill(1, 9)\n", "process", "reject", 2),
    # native code
    ("import ctypes\n", "ffi", "reject", 1),
    ("from cffi import FFI\n", "ffi", "reject", 1),
    ("from torch.utils.cpp_extension import load_inline\n", "native_code", "warn", 1),
    # limits
    ("import resource\n", "limits", "reject", 1),
    ("import os\nos.sched_setaffinity(0, {0, 1})\n", "limits", "reject", 2),
    # environment
    ("import os\nkey = os.environ['OPENAI_API_KEY']\n", "environ", "reject", 2),
    ("import os\nkey = os.environ.get('HOME')\n", "environ", "reject", 2),
    ("import os\nkey = os.getenv('OPENAI_API_KEY')\n", "environ", "reject", 1 + 1),
    ("from os import environ\n", "environ", "reject", 1),
    ("from os import getenv as g\n", "environ", "reject", 1),
    # paths
    ("data = open('/etc/passwd').read()\n", "path", "reject", 1),
    ("from pathlib import Path\np = Path('/root/.cache/evo/data')\n", "path", "reject", 2),
    ("data = open('../../manifest').read()\n", "path", "reject", 1),
    ("import numpy as np\nx = np.memmap('/data/train.bin')\n", "path", "reject", 2),
    ("import torch\nw = torch.load('~/weights.pt')\n", "path", "reject", 2),
    ("pid = 1\nf = open(f'/proc/{pid}/environ')\n", "path", "reject", 2),
    ("import os\nos.listdir('..')\n", "path", "reject", 2),
    # eval data names
    ("name = 'manifest.json'\n", "eval_data", "reject", 1),
    ("import os\np = os.path.join('x', 'eval', 'val.bin')\n", "eval_data", "reject", 2),
    ("p = 'data/heldout.bin'\n", "eval_data", "reject", 1),
    # seeds
    ("import torch\ntorch.manual_seed(42)\n", "seed", "reject", 2),
    ("import random\nrandom.seed(1337)\n", "seed", "reject", 2),
    ("import numpy as np\nnp.random.seed(0)\n", "seed", "reject", 2),
    ("import torch\nSEED = 137\ntorch.cuda.manual_seed_all(SEED)\n", "seed", "reject", 3),
    ("from torch import manual_seed\nmanual_seed(seed=7)\n", "seed", "reject", 2),
    ("import numpy as np\nrng = np.random.default_rng(0)\n", "seed_local", "warn", 2),
    ("import torch\ng = torch.Generator().manual_seed(3)\n", "seed_local", "warn", 2),
    ("import random\nr = random.Random(5)\n", "seed_local", "warn", 2),
    # harness internals
    ("import gpt.score\n", "gpt_internals", "reject", 1),
    ("from gpt import data\n", "gpt_internals", "reject", 1),
    ("from gpt.runner import run_slot\n", "gpt_internals", "reject", 1),
    ("import gpt.lab\nimport gpt\nx = gpt.data\n", "gpt_internals", "reject", 3),
    ("from gpt import lab\nlab._score_standalone(None)\n", "lab_private", "reject", 2),
    ("from gpt import lab\nrun = lab.connect()\np = run._spec.train_path\n", "lab_private", "reject", 3),
    ("from gpt import lab\nrun = lab.connect()\nd = getattr(run, '_deadline')\n", "lab_private", "reject", 3),
    ("from gpt.lab import SlotSpec\n", "lab_contract", "warn", 1),
    # monkeypatching the clock and the harness
    ("import time\ntime.time = lambda: 0.0\n", "monkeypatch", "reject", 2),
    ("import time as t\nt.monotonic = lambda: 0.0\n", "monkeypatch", "reject", 2),
    ("import time\nsetattr(time, 'perf_counter', None)\n", "monkeypatch", "reject", 2),
    ("from gpt import lab\nlab.connect = None\n", "monkeypatch", "reject", 2),
    ("from gpt import lab\nrun = lab.connect()\nrun.time_left = lambda: 1e9\n", "monkeypatch", "reject", 3),
    ("from gpt import lab\nrun = lab.connect()\nrun._deadline += 100\n", "monkeypatch", "reject", 3),
    ("import torch\ntorch.cuda.synchronize = lambda: None\n", "monkeypatch", "reject", 2),
    # dynamic imports
    ("m = __import__('socket')\n", "dynamic_import", "reject", 1),
    ("import importlib\nm = importlib.import_module('subprocess')\n", "dynamic_import", "reject", 2),
    ("import importlib\nm = importlib.import_module('gpt.score')\n", "dynamic_import", "reject", 2),
    ("name = 'so' + 'cket'\nm = __import__(name)\n", "dynamic_import", "warn", 2),
    ("__import__('os').system('ls')\n", "process", "reject", 1),
    ("import os\ngetattr(os, 'system')('ls')\n", "process", "reject", 2),
    # exec / eval
    ("exec('x = 1')\n", "exec_eval", "warn", 1),
    ("y = eval('1 + 1')\n", "exec_eval", "warn", 1),
    ("c = compile('1', 'f', 'eval')\n", "exec_eval", "warn", 1),
    # introspection
    ("import sys\nm = sys.modules['os']\n", "introspection", "warn", 2),
    ("g = globals()\n", "introspection", "warn", 1),
    ("x = ().__class__.__base__.__subclasses__()\n", "introspection", "warn", 1),
    ("from os import *\n", "introspection", "warn", 1),
]


@pytest.mark.parametrize("source, rule, severity, line", CASES,
                         ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_rule(source, rule, severity, line):
    findings = check_source(textwrap.dedent(source))
    hits = [f for f in findings if f.rule == rule]
    assert hits, f"expected a {rule} finding, got:\n{format_findings(findings)}"
    assert any(f.line == line and f.severity == severity for f in hits), format_findings(findings)
    assert rejected(findings) == (severity == "reject" or any(f.severity == "reject" for f in findings))


def test_every_rule_is_exercised():
    assert {c[1] for c in CASES} == set(RULES)


@pytest.mark.parametrize("genome", sorted((REPO / "genomes").glob("*.py")), ids=lambda p: p.name)
def test_seed_genomes_are_clean(genome):
    findings = check_source(genome.read_text())
    assert findings == [], format_findings(findings)


HONEST = """
\"\"\"An honest genome that uses the things near the rules: os.path, time, seeds from run.seed,
torch tuning flags, getattr on a model, a relative checkpoint path. It mentions manifest.json
and val.bin in this docstring only.\"\"\"
import math
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

from gpt import lab

run = lab.connect()
torch.manual_seed(run.seed + 1)
random.seed(run.seed)
rng = np.random.default_rng(run.seed)
g = torch.Generator().manual_seed(run.seed)
torch.backends.cudnn.benchmark = True
torch.set_float32_matmul_precision("high")
start = time.time()
act = getattr(F, "gelu")
os.makedirs("checkpoints", exist_ok=True)
path = os.path.join("checkpoints", "last.pt")
with open("notes.txt", "w") as f:
    f.write("/".join(["a", "b"]).replace("/", "_"))
left = run.time_left()
print(f"elapsed {time.time() - start:.1f}s, {math.pi:.2f}")
"""


def test_honest_patterns_are_not_flagged():
    findings = check_source(HONEST)
    assert findings == [], format_findings(findings)


def test_findings_name_their_lines_and_serialize():
    src = "import os\n\n\nx = os.environ\ny = eval('1')\n"
    findings = check_source(src)
    assert [(f.rule, f.line, f.severity) for f in findings] == [("environ", 4, "reject"), ("exec_eval", 5, "warn")]
    assert findings[0].to_dict() == {"rule": "environ", "line": 4, "message": findings[0].message,
                                     "severity": "reject"}
    text = format_findings(findings)
    assert "line 4: [environ, reject]" in text and "line 5: [exec_eval, warn]" in text


def test_imports_inside_functions_resolve():
    src = "def f():\n    import subprocess as s\n    return s.run(['ls'])\n"
    assert {(f.rule, f.line) for f in check_source(src)} >= {("process", 2), ("process", 3)}
