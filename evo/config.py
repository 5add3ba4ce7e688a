"""Run configuration: one schema, presets, a TOML file, then command-line flags.

Every key has a default and a one-line comment in `SCHEMA`; `examples/run.toml` is
generated from it (`evo config > examples/run.toml`), so the documented example cannot drift.
An unknown key, a wrong type or an impossible value is a `UserError` naming the key.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

from gpt.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESETS = {
    "cpu-demo": {"budget_s": 30.0, "evals": 20, "hours": 0.22, "population_size": 6},
    "smoke": {"budget_s": 3.0, "evals": 8, "hours": 0.05, "noise_repeats": 2, "population_size": 4,
              "eval_tokens": 8192},
    "gpu-5min": {"budget_s": 300.0, "evals": 0, "hours": 8.0, "genomes": ("genomes/nanochat_gpu.py",), "tokenizer": "bpe:8192",
                 "eval_tokens": 1048576, "eval_seq_len": 2048, "population_size": 16},
}


@dataclass(frozen=True)
class Key:
    """One configuration key: its TOML section, type, default, allowed values and comment."""

    name: str
    section: str
    type: type
    default: object
    comment: str
    choices: tuple = ()
    minimum: float | None = None
    optional: bool = False


SCHEMA = (
    Key("preset", "run", str, "cpu-demo", "starting point for every other key", tuple(PRESETS)),
    Key("out", "run", str, "", "run directory (empty: logs/<timestamp>-<preset>)"),
    Key("genomes", "run", tuple, ("genomes/tiny_cpu.py",), "seed genome scripts"),
    Key("data", "run", str, "builtin", "data source: builtin | text:GLOB | parquet:GLOB[:COLUMN] | hf:NAME "
        "(stdlib | pysource: never sealed)"),
    Key("allow_unsealed", "run", bool, False, "run even if a genome could read eval documents at this sandbox level "
        "(the run is stamped unsealed)"),
    Key("tokenizer", "run", str, "byte", "byte | bpe:VOCAB (trained on the train split only)"),
    Key("seed", "run", int, 0, "run seed: operator choices and harness seeds derive from it", minimum=0),
    Key("evals", "run", int, 20, "stop after this many finished evaluations (0: no limit)", minimum=0),
    Key("hours", "run", float, 0.22, "stop starting new slots after this many hours (0: no limit)", minimum=0),
    Key("budget_s", "slots", float, 30.0, "training wall-clock budget of one slot, seconds", minimum=0.5),
    Key("slots", "slots", int, 0, "parallel slots (0: one per visible GPU, else 1 on CPU)", minimum=0),
    Key("device", "slots", str, "auto", "auto | cpu | cuda"),
    Key("sandbox", "slots", str, "auto", "auto | bwrap | netns | none", ("auto", "bwrap", "netns", "none")),
    Key("grace_s", "slots", float, 0.0, "seconds past the budget before the hard kill (0: max(10, 20% of budget))",
        minimum=0),
    Key("eval_tokens", "slots", int, 32768, "tokens scored per eval split", minimum=512),
    Key("eval_seq_len", "slots", int, 256, "context length the scorer feeds the model", minimum=8),
    Key("contended_share", "slots", float, 0.4, "a CPU slot whose processes got less than this share of its threads' "
        "time was starved: re-run, not folded in (0: never)", minimum=0),
    Key("dask_scheduler", "slots", str, "", "address of a Dask scheduler to run slots on (empty: local slots)"),
    Key("population_size", "search", int, 6, "individuals kept in the population", minimum=2),
    Key("tournament_size", "search", int, 3, "aspirants per tournament", minimum=1),
    Key("crossover_rate", "search", float, 0.2, "share of offline children made by knob crossover", minimum=0),
    Key("noise_repeats", "fitness", int, 3, "evaluations of the seed (fresh seeds) that measure the noise floor",
        minimum=2),
    Key("min_noise_floor", "fitness", float, 0.002, "lower bound on the noise floor, bpb", minimum=0),
    Key("threshold", "fitness", float, 0.0, "Thresholdout threshold, bpb (0: 2 x noise floor)", minimum=0),
    Key("holdout_noise", "fitness", float, 0.0, "Thresholdout Laplace scale, bpb (0: noise floor / 2)", minimum=0),
    Key("holdout_budget", "fitness", int, 40, "held-out reveals allowed before Thresholdout stops answering",
        minimum=0),
    Key("penalty_weight", "fitness", float, 1.0, "bpb of penalty per bpb of answered gap beyond the noise floor",
        minimum=0),
)
SECTIONS = ("run", "slots", "search", "fitness", "llm")


@dataclass(frozen=True)
class RunConfig:
    """The resolved configuration of one run (every key has a value)."""

    preset: str = "cpu-demo"
    out: str = ""
    genomes: tuple = ("genomes/tiny_cpu.py",)
    data: str = "builtin"
    allow_unsealed: bool = False
    tokenizer: str = "byte"
    seed: int = 0
    evals: int = 20
    hours: float = 0.22
    budget_s: float = 30.0
    slots: int = 0
    device: str = "auto"
    sandbox: str = "auto"
    grace_s: float = 0.0
    eval_tokens: int = 32768
    eval_seq_len: int = 256
    contended_share: float = 0.4
    dask_scheduler: str = ""
    population_size: int = 6
    tournament_size: int = 3
    crossover_rate: float = 0.2
    noise_repeats: int = 3
    min_noise_floor: float = 0.002
    threshold: float = 0.0
    holdout_noise: float = 0.0
    holdout_budget: int = 40
    penalty_weight: float = 1.0
    llm: dict = field(default_factory=dict)  # validated by evo.llm.config.LLMConfig

    def to_toml(self) -> str:
        """The resolved config as TOML (written to RUN_DIR/run.toml)."""
        return render_toml({k.name: getattr(self, k.name) for k in SCHEMA}, llm=self.llm)


KEYS = {k.name: k for k in SCHEMA}


def _check(key: Key, value, where: str):
    if key.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if key.type is tuple:
        if isinstance(value, str):
            value = (value,)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise UserError(f"{where}: must be a list of strings, got {value!r}")
        value = tuple(value)
    elif not isinstance(value, key.type) or isinstance(value, bool) != (key.type is bool):
        raise UserError(f"{where}: must be {key.type.__name__}, got {type(value).__name__} {value!r}")
    if key.choices and value not in key.choices:
        raise UserError(f"{where}: {value!r} is not allowed; allowed values: {', '.join(map(str, key.choices))}")
    if key.minimum is not None and value < key.minimum:
        raise UserError(f"{where}: {value!r} is too small; it must be >= {key.minimum}")
    if key.name == "device" and not (value in ("auto", "cpu") or value.startswith("cuda")):
        raise UserError(f"{where}: {value!r} is not a device; allowed values: auto, cpu, cuda, cuda:N")
    if key.name == "genomes" and not value:
        raise UserError(f"{where}: give at least one seed genome")
    return value


def check_value(name: str, value):
    """Validate one key's value (for overrides applied outside `resolve`, e.g. `evo resume --evals`)."""
    if name not in KEYS:
        raise UserError(f"unknown config key {name!r}")
    return _check(KEYS[name], value, f"{KEYS[name].section}.{name}")


def read_toml(path: str | Path) -> dict:
    """Flatten a run.toml into {key: value}, checking sections and keys."""
    try:
        doc = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist")
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {path} is not valid TOML: {exc}")
    flat: dict = {}
    for section, body in doc.items():
        if section not in SECTIONS or not isinstance(body, dict):
            raise UserError(f"{path}: unknown section [{section}]; allowed sections: {', '.join(SECTIONS)}")
        if section == "llm":
            flat["llm"] = body
            continue
        for name, value in body.items():
            key = KEYS.get(name)
            if key is None or key.section != section:
                allowed = ", ".join(k.name for k in SCHEMA if k.section == section)
                raise UserError(f"{path}: unknown key {section}.{name}; allowed keys in [{section}]: {allowed}")
            flat[name] = _check(key, value, f"{section}.{name}")
    return flat


def resolve(file_values: dict | None = None, overrides: dict | None = None) -> RunConfig:
    """Defaults < preset < TOML file < command-line flags."""
    file_values, overrides = dict(file_values or {}), {k: v for k, v in (overrides or {}).items() if v is not None}
    preset = overrides.get("preset") or file_values.get("preset") or "cpu-demo"
    if preset not in PRESETS:
        raise UserError(f"--preset {preset!r} is unknown; allowed values: {', '.join(PRESETS)}")
    values = {"preset": preset, **PRESETS[preset], **file_values, **overrides}
    values["preset"] = preset
    for name in list(values):
        if name == "llm":
            continue
        if name not in KEYS:
            raise UserError(f"unknown config key {name!r}")
        values[name] = _check(KEYS[name], values[name], f"{KEYS[name].section}.{name}")
    return dataclasses.replace(RunConfig(), **values)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def render_toml(values: dict, llm: dict | None = None, comments: bool = True) -> str:
    lines = []
    for section in SECTIONS[:-1]:
        lines.append(f"[{section}]")
        for key in SCHEMA:
            if key.section == section:
                comment = f"  # {key.comment}" if comments else ""
                lines.append(f"{key.name} = {_toml_value(values.get(key.name, key.default))}{comment}")
        lines.append("")
    if llm:
        lines.append("[llm]")
        for k, v in llm.items():
            if k != "models":
                lines.append(f"{k} = {_toml_value(v)}")
        for model in llm.get("models", []):
            lines.append("[[llm.models]]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in model.items())
    return "\n".join(lines).rstrip() + "\n"


def example_toml() -> str:
    """The documented example: every key, its default and a one-line comment. Keys are commented
    out, so that copying the file changes nothing until a line is uncommented (a value set here
    would override the preset)."""
    header = ("# evo run configuration (`evo run --config run.toml`). Every key is optional; each is shown\n"
              "# commented out, with its default. Precedence: defaults < preset < this file < flags.\n"
              "# Presets: " + "; ".join(f"{n}: {v}" for n, v in PRESETS.items()) + "\n\n")
    body = "\n".join(line if not line or line.startswith("[") else "# " + line
                     for line in render_toml({k.name: k.default for k in SCHEMA}).splitlines())
    return header + body + (
        "\n\n# [llm] (optional): LLM operators through any OpenAI-compatible endpoint; see docs/llm.md.\n")
