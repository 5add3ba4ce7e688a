"""Static checks on a genome's source, run before a slot is spent on it.

`check_source(source)` parses the genome with `ast` and returns `Finding`s (rule, line,
message, severity). The slot runner fails a genome with any `reject` finding at once
(reason `rejected`, no process started) and records every finding, warnings included,
in the result (`static_findings`). These checks are a cheap first filter against the
obvious; the sandbox (gpt.sandbox) is what enforces. Names are resolved through import
aliases (`import os as o; o.system`, `from os import environ`), not through dataflow:
a genome that hides a call behind data (getattr with a computed name, sys.modules) gets
an `introspection`/`dynamic_import` warning, and meets the sandbox.

Rules:

| rule           | severity | what it flags                                                                      |
|----------------|----------|------------------------------------------------------------------------------------|
| syntax         | reject   | the source does not parse (the slot would only crash)                               |
| network        | reject   | socket, ssl, urllib, http, requests, httpx, aiohttp, ftplib, smtplib, xmlrpc,       |
|                |          | socketserver, websockets, grpc, zmq, paramiko, asyncio, torch.distributed, torch.hub,|
|                |          | huggingface_hub, ... (import or use)                                                |
| process        | reject   | subprocess, pty, multiprocessing, torch.multiprocessing, ProcessPoolExecutor,       |
|                |          | os.system/popen/exec*/spawn*/posix_spawn*/fork/forkpty/setsid/kill/killpg            |
| ffi            | reject   | ctypes, cffi (native calls: prctl, syscalls, anything)                              |
| native_code    | warn     | torch.utils.cpp_extension (compiles and loads C++; runs a compiler)                 |
| limits         | reject   | resource (rlimits), os.sched_setaffinity, os.unshare/setns/chroot                   |
| environ        | reject   | os.environ, os.environb, os.getenv, os.putenv, os.unsetenv (reading the environment) |
| path           | reject   | a string literal path that is absolute, starts with ~ or has a `..` component,      |
|                |          | passed to open/Path/os.*/shutil.*/glob/np.memmap/np.load/torch.load/... (the genome  |
|                |          | works in its own directory; the train split comes from lab)                         |
| eval_data      | reject   | a string naming the dataset's private files: manifest.json, eval/, val.bin,         |
|                |          | heldout.bin, test.bin                                                               |
| seed           | reject   | random.seed / np.random.seed / torch.manual_seed / torch.cuda.manual_seed(_all)     |
|                |          | with a constant (literal or module-level constant): the harness owns the seed and   |
|                |          | re-evaluates promising genomes with fresh seeds; a pinned seed defeats that (a      |
|                |          | lucky seed kept as a "win"). Seeding from run.seed is fine.                         |
| seed_local     | warn     | a local generator with a constant seed: np.random.default_rng(0), RandomState(0),   |
|                |          | random.Random(0), gen.manual_seed(0), rng.seed(0)                                   |
| gpt_internals  | reject   | importing or using any gpt module but gpt.lab (gpt.score, gpt.data, gpt.runner, ...) |
| lab_private    | reject   | a private name of gpt.lab or of the Run object (lab._x, run._spec, run.__dict__)    |
| lab_contract   | warn     | a public gpt.lab name outside the genome contract (anything but connect, Run,       |
|                |          | ExportError)                                                                        |
| monkeypatch    | reject   | assigning (or setattr/delattr) attributes of time, gpt.lab, builtins,               |
|                |          | torch.cuda.synchronize/Event, or of the Run object (clock and harness tricks)       |
| dynamic_import | reject   | __import__ / importlib.import_module of a banned module named by a literal          |
| dynamic_import | warn     | __import__ / importlib.import_module of anything else (a computed name, a module    |
|                |          | that is allowed), importlib.util loaders                                            |
| exec_eval      | warn     | exec / eval / compile builtins (code the checks cannot see)                         |
| introspection  | warn     | sys.modules, builtins, __builtins__, globals(), vars(), __subclasses__, __globals__,|
|                |          | gc.get_objects/get_referrers, getattr/setattr on a module with a computed name,    |
|                |          | star imports from os/sys/time/gpt.lab                                               |

`torch.backends.*` / `torch._dynamo.config` / `torch._inductor.config` assignments are normal
tuning and are not flagged. An honest genome (genomes/*.py) gets no finding.
"""
from __future__ import annotations

import ast
import re
from dataclasses import asdict, dataclass

REJECT = "reject"
WARN = "warn"

RULES: dict[str, str] = {  # rule -> default severity (dynamic_import also warns)
    "syntax": REJECT, "network": REJECT, "process": REJECT, "ffi": REJECT, "native_code": WARN, "limits": REJECT,
    "environ": REJECT, "path": REJECT, "eval_data": REJECT, "seed": REJECT, "seed_local": WARN,
    "gpt_internals": REJECT, "lab_private": REJECT, "lab_contract": WARN, "monkeypatch": REJECT,
    "dynamic_import": REJECT, "exec_eval": WARN, "introspection": WARN,
}

# module (or dotted prefix) -> rule, for imports, attribute use and dynamic imports
BANNED_MODULES: dict[str, str] = {
    **{m: "network" for m in (
        "socket", "_socket", "ssl", "_ssl", "urllib", "urllib2", "urllib3", "http", "httplib", "requests", "httpx",
        "aiohttp", "ftplib", "smtplib", "poplib", "imaplib", "nntplib", "telnetlib", "xmlrpc", "socketserver",
        "websocket", "websockets", "grpc", "zmq", "paramiko", "pycurl", "webbrowser", "asyncio", "torch.distributed",
        "torch.hub", "huggingface_hub")},
    **{m: "process" for m in (
        "subprocess", "_posixsubprocess", "pty", "multiprocessing", "_multiprocessing", "torch.multiprocessing",
        "concurrent.futures.process", "pexpect", "sh", "plumbum")},
    **{m: "ffi" for m in ("ctypes", "_ctypes", "cffi")},
    "torch.utils.cpp_extension": "native_code",
    "resource": "limits",
}

BANNED_NAMES: dict[str, str] = {  # exact qualified name -> rule
    **{f"os.{n}": "process" for n in (
        "system", "popen", "execl", "execle", "execlp", "execlpe", "execv", "execve", "execvp", "execvpe", "spawnl",
        "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp",
        "fork", "forkpty", "setsid", "setpgid", "setpgrp", "kill", "killpg", "startfile")},
    "concurrent.futures.ProcessPoolExecutor": "process",
    "signal.pthread_kill": "process",
    **{f"os.{n}": "limits" for n in ("sched_setaffinity", "unshare", "setns", "chroot", "setrlimit", "prlimit")},
    **{f"{m}.{n}": "environ" for m in ("os", "posix") for n in (
        "environ", "environb", "getenv", "getenvb", "putenv", "unsetenv")},
    "sys.modules": "introspection",
    "builtins": "introspection",
    "gc.get_objects": "introspection",
    "gc.get_referrers": "introspection",
}
for _q, _r in list(BANNED_NAMES.items()):  # `posix` is `os` under another name
    if _q.startswith("os."):
        BANNED_NAMES.setdefault("posix." + _q[3:], _r)

GLOBAL_SEEDERS = {"random.seed", "numpy.random.seed", "torch.manual_seed", "torch.random.manual_seed",
                  "torch.cuda.manual_seed", "torch.cuda.manual_seed_all", "torch.mps.manual_seed",
                  "torch.xpu.manual_seed", "torch.xpu.manual_seed_all"}
LOCAL_RNGS = {"numpy.random.default_rng", "numpy.random.RandomState", "numpy.random.Generator", "numpy.random.PCG64",
              "numpy.random.Philox", "numpy.random.SeedSequence", "random.Random"}

LAB = "gpt.lab"
LAB_CONTRACT = {"connect", "Run", "ExportError"}
PATCH_PREFIXES = ("time.", "gpt.lab.", "builtins.", "torch.cuda.synchronize", "torch.cuda.Event")
FILE_CALLS = {
    "open", "Path", "PurePath", "PosixPath", "PurePosixPath", "listdir", "scandir", "walk", "stat", "lstat", "remove",
    "unlink", "rename", "mkdir", "makedirs", "rmdir", "removedirs", "chdir", "symlink", "link", "readlink",
    "exists", "isfile", "isdir", "islink", "getsize", "access", "chmod", "chown", "truncate", "utime", "glob", "iglob",
    "copy", "copy2", "copyfile", "copytree", "rmtree", "move", "memmap", "load", "fromfile", "loadtxt", "genfromtxt",
    "save", "savez", "tofile", "join", "read_text", "read_bytes", "write_text", "write_bytes", "ZipFile", "TarFile",
    "File", "connect", "load_file", "safe_open",
}
EVAL_DATA = re.compile(r"manifest\.json|(^|[/\\])eval[/\\]|(^|[/\\])(val|heldout|test)\.bin")
BUILTINS_CHECKED = {"open", "exec", "eval", "compile", "__import__", "getattr", "setattr", "delattr", "globals", "vars"}
INTROSPECTION_ATTRS = {"__subclasses__", "__globals__", "__builtins__", "__code__"}
STAR_WATCH = {"os", "posix", "sys", "time", "gpt.lab", "builtins", "importlib"}


@dataclass(frozen=True)
class Finding:
    """One thing the checks found: which rule, where, why, and whether it rejects the genome."""

    rule: str
    line: int
    message: str
    severity: str  # "reject" | "warn"

    def to_dict(self) -> dict:
        return asdict(self)


def format_findings(findings) -> str:
    return "\n".join(f"line {f.line}: [{f.rule}, {f.severity}] {f.message}" for f in findings)


def rejected(findings) -> bool:
    return any(f.severity == REJECT for f in findings)


def _module_rule(module: str) -> str | None:
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        rule = BANNED_MODULES.get(".".join(parts[:i]))
        if rule:
            return rule
    return None


def _path_problem(text: str) -> str | None:
    t = text.replace("\\", "/")
    if t.startswith("/"):
        return "an absolute path"
    if t.startswith("~"):
        return "a path in a home directory"
    if ".." in t.split("/"):
        return "a path with '..' (outside the genome's directory)"
    return None


class _Checker(ast.NodeVisitor):
    def __init__(self):
        self.findings: list[Finding] = []
        self.aliases: dict[str, str] = {}  # local name -> qualified module or attribute
        self.constants: set[str] = set()  # module-level names bound once to a literal number
        self.runs: set[str] = set()  # names bound to lab.connect()

    # ------------------------------------------------------------ helpers
    def add(self, rule: str, node, message: str, severity: str | None = None) -> None:
        self.findings.append(Finding(rule, getattr(node, "lineno", 0) or 0, message, severity or RULES[rule]))

    def qualname(self, node) -> str | None:
        if isinstance(node, ast.Name):
            if node.id in self.aliases:
                return self.aliases[node.id]
            return node.id if node.id in BUILTINS_CHECKED else None
        if isinstance(node, ast.Attribute):
            base = self.qualname(node.value)
            return f"{base}.{node.attr}" if base else None
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) \
                and self.qualname(node.func) in ("__import__", "importlib.import_module"):
            return node.args[0].value  # __import__("os").system is os.system
        return None

    def is_constant(self, node) -> bool:
        if isinstance(node, ast.Constant):
            return isinstance(node.value, (int, float)) and not isinstance(node.value, bool) or isinstance(node.value, str)
        if isinstance(node, ast.UnaryOp):
            return self.is_constant(node.operand)
        if isinstance(node, ast.BinOp):
            return self.is_constant(node.left) and self.is_constant(node.right)
        if isinstance(node, ast.Name):
            return node.id in self.constants
        return False

    def check_qualname(self, qn: str, node, how: str = "uses") -> None:
        rule = BANNED_NAMES.get(qn) or _module_rule(qn)
        if rule:
            self.add(rule, node, f"{how} {qn}")
            return
        if qn == "gpt" or qn.startswith("gpt."):
            self.check_gpt(qn, node, how)

    def check_gpt(self, qn: str, node, how: str) -> None:
        parts = qn.split(".")
        if len(parts) == 1:
            return
        if parts[1] != "lab":
            self.add("gpt_internals", node, f"{how} {qn}: a genome may use gpt.lab only (the genome contract)")
        elif len(parts) > 2:
            if parts[2].startswith("_"):
                self.add("lab_private", node, f"{how} {qn}: a private name of gpt.lab")
            elif parts[2] not in LAB_CONTRACT:
                self.add("lab_contract", node, f"{how} {qn}: not part of the genome contract "
                                               f"({', '.join(sorted(LAB_CONTRACT))})")

    # ------------------------------------------------------------ imports
    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if a.asname:
                self.aliases[a.asname] = a.name
            else:
                top = a.name.split(".")[0]
                self.aliases[top] = top
            self.check_qualname(a.name, node, "imports")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or not node.module:
            return
        mod = node.module
        if _module_rule(mod):
            self.add(_module_rule(mod), node, f"imports from {mod}")
            return
        for a in node.names:
            if a.name == "*":
                if mod in STAR_WATCH:
                    self.add("introspection", node, f"star import from {mod} hides what the genome uses")
                elif mod == "gpt" or mod.startswith("gpt."):
                    self.check_gpt(mod + ".*", node, "imports")
                continue
            qn = f"{mod}.{a.name}"
            self.aliases[a.asname or a.name] = qn
            self.check_qualname(qn, node, "imports")

    # ------------------------------------------------------------ names and attributes
    def visit_Name(self, node: ast.Name) -> None:
        # a name imported from a banned place (`from os import environ`) is reported at its import
        if node.id == "__builtins__":
            self.add("introspection", node, "uses __builtins__")

    def visit_Expr(self, node: ast.Expr) -> None:
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return  # a docstring or bare string: inert
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        qn = self.qualname(node)
        if qn:
            self.check_qualname(qn, node)
        elif node.attr in INTROSPECTION_ATTRS:
            self.add("introspection", node, f"uses .{node.attr}")
        if isinstance(node.value, ast.Name) and node.value.id in self.runs and node.attr.startswith("_"):
            self.add("lab_private", node, f"uses {node.value.id}.{node.attr}: a private attribute of the Run object")
        self.generic_visit(node)

    # ------------------------------------------------------------ assignments (monkeypatching)
    def _check_target(self, target) -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            for t in target.elts:
                self._check_target(t)
        elif isinstance(target, ast.Starred):
            self._check_target(target.value)
        elif isinstance(target, ast.Attribute):
            qn = self.qualname(target)
            if qn and qn.startswith(PATCH_PREFIXES):
                self.add("monkeypatch", target, f"assigns {qn}: the harness's clock and API are not the genome's to patch")
            elif isinstance(target.value, ast.Name) and target.value.id in self.runs:
                self.add("monkeypatch", target, f"assigns {target.value.id}.{target.attr} on the Run object")
        elif isinstance(target, ast.Subscript):
            # `time.__dict__["monotonic"] = ...` or `vars(time)[...] = ...`: patching through a namespace dict
            base = target.value
            through_dict = isinstance(base, ast.Attribute) and base.attr == "__dict__"
            through_vars = isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "vars"
            if through_dict or through_vars:
                self.add("monkeypatch", target, "assigns into a namespace's __dict__ / vars(): patching by another name")

    def visit_Assign(self, node: ast.Assign) -> None:
        for t in node.targets:
            self._check_target(t)
        if isinstance(node.value, ast.Call) and self.qualname(node.value.func) == f"{LAB}.connect":
            for t in node.targets:
                if isinstance(t, ast.Name):
                    self.runs.add(t.id)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._check_target(node.target)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._check_target(node.target)
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        for t in node.targets:
            self._check_target(t)
        self.generic_visit(node)

    # ------------------------------------------------------------ strings
    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and EVAL_DATA.search(node.value):
            self.add("eval_data", node, f"names the dataset's private files ({node.value[:60]!r}): "
                                        "a genome gets the train split from lab only")

    # ------------------------------------------------------------ calls
    def visit_Call(self, node: ast.Call) -> None:
        qn = self.qualname(node.func)
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        first = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "seed"), None)
        if qn in GLOBAL_SEEDERS and first is not None and self.is_constant(first):
            self.add("seed", node, f"{qn} with a constant seed: the harness owns the seed (use run.seed, "
                                   "which lab.connect() already applies)")
        elif qn in LOCAL_RNGS and first is not None and self.is_constant(first):
            self.add("seed_local", node, f"{qn} with a constant seed (derive it from run.seed)")
        elif (qn is None and name in ("manual_seed", "seed") and first is not None and self.is_constant(first)):
            self.add("seed_local", node, f".{name}() with a constant seed (derive it from run.seed)")
        if qn in ("exec", "eval", "compile"):
            self.add("exec_eval", node, f"{qn}() runs code the static checks cannot see")
        elif qn in ("__import__", "importlib.import_module", "importlib.__import__"):
            self.check_dynamic_import(qn, node)
        elif qn and qn.startswith("importlib.util.") or qn in ("importlib.machinery.SourceFileLoader",):
            self.add("dynamic_import", node, f"{qn} loads code the static checks cannot see", WARN)
        elif qn in ("globals", "vars"):
            self.add("introspection", node, f"{qn}() reaches names the static checks cannot follow")
        elif qn in ("getattr", "setattr", "delattr") and len(node.args) >= 2:
            self.check_reflection(qn, node)
        if name in FILE_CALLS:
            for arg in list(node.args) + [k.value for k in node.keywords]:
                text = _literal_prefix(arg)
                problem = _path_problem(text) if text else None
                if problem:
                    self.add("path", node, f"{name}() with {problem} ({text[:60]!r}): a genome reads and "
                                           "writes its own directory only")
                    break
        self.generic_visit(node)

    def check_dynamic_import(self, qn: str, node: ast.Call) -> None:
        arg = node.args[0] if node.args else None
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            rule = _module_rule(arg.value) or BANNED_NAMES.get(arg.value)
            if rule or arg.value.startswith("gpt.") and arg.value != LAB:
                self.add("dynamic_import", node, f"{qn}({arg.value!r}) imports a banned module ({rule or 'gpt_internals'})")
            else:
                self.add("dynamic_import", node, f"{qn}({arg.value!r}): import it with an import statement", WARN)
        else:
            self.add("dynamic_import", node, f"{qn}() with a computed name: the checks cannot see what it imports", WARN)

    def check_reflection(self, qn: str, node: ast.Call) -> None:
        base = self.qualname(node.args[0])
        is_run = isinstance(node.args[0], ast.Name) and node.args[0].id in self.runs
        attr = node.args[1]
        if not (base or is_run):
            return
        if not (isinstance(attr, ast.Constant) and isinstance(attr.value, str)):
            self.add("introspection", node, f"{qn}() on {base or 'the Run object'} with a computed name")
            return
        target = f"{base}.{attr.value}" if base else None
        if qn in ("setattr", "delattr") and (is_run or target.startswith(PATCH_PREFIXES)):
            self.add("monkeypatch", node, f"{qn}() on {target or 'the Run object'}")
        elif target:
            self.check_qualname(target, node)
        elif attr.value.startswith("_"):
            self.add("lab_private", node, f"{qn}() of the Run object's private {attr.value}")


def _literal_prefix(node) -> str | None:
    """The literal text of a string argument, or of the literal start of an f-string."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = [v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
        if node.values and isinstance(node.values[0], ast.Constant):
            return "".join(parts)
        joined = "".join(parts)
        return joined if "../" in joined or "/.." in joined else None
    return None


def _module_constants(tree: ast.Module) -> set[str]:
    """Module-level names bound exactly once in the whole file, to a literal number."""
    counts: dict[str, int] = {}
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, (ast.For, ast.comprehension)):
            targets = [node.target]
        for t in targets:
            for n in ast.walk(t):
                if isinstance(n, ast.Name):
                    counts[n.id] = counts.get(n.id, 0) + 1
    out = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            v = node.value
            if isinstance(v, ast.UnaryOp):
                v = v.operand
            if isinstance(v, ast.Constant) and isinstance(v.value, (int, float)) and not isinstance(v.value, bool):
                if counts.get(node.targets[0].id) == 1:
                    out.add(node.targets[0].id)
    return out


def check_source(source: str, filename: str = "genome.py") -> list[Finding]:
    """All findings for a genome's source, sorted by line."""
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as exc:
        return [Finding("syntax", exc.lineno or 0, f"the genome does not parse: {exc.msg}", REJECT)]
    except ValueError as exc:  # e.g. null bytes
        return [Finding("syntax", 0, f"the genome does not parse: {exc}", REJECT)]
    checker = _Checker()
    checker.constants = _module_constants(tree)
    for node in ast.walk(tree):  # imports first, wherever they are, so aliases resolve everywhere
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            checker.visit(node)
    imports_found = checker.findings
    checker.findings = []
    for node in ast.walk(tree):  # Run objects, so their use before assignment order does not matter
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
                and checker.qualname(node.value.func) == f"{LAB}.connect":
            checker.runs.update(t.id for t in node.targets if isinstance(t, ast.Name))
    for node in tree.body:
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            checker.visit(node)
        else:
            checker.generic_visit(node)
    seen, out = set(), []
    for f in sorted(imports_found + checker.findings, key=lambda f: (f.line, f.rule)):
        if (f.rule, f.line, f.message) not in seen:
            seen.add((f.rule, f.line, f.message))
            out.append(f)
    return out
