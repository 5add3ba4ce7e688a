"""Run configuration, declared once: the `RunConfig` fields carry their TOML section, comment,
allowed values and command-line flag, and everything else is derived from them: `SCHEMA`, the
documented example (`evo config > examples/run.toml`), the `evo run` flags, the checks.

Precedence: defaults < preset < TOML file < command-line flags. `[llm]` is typed inside the
config (`evo.llm_config.LLMConfig`, which imports nothing of the LLM client). An unknown key,
a wrong type or an impossible value is a `UserError` naming the key.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from evo.llm_config import LLMConfig
from gpt.errors import UserError
from gpt.sources import SOURCE_GRAMMAR, parse_source

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SECTIONS = ("run", "slots", "cluster", "search", "fitness", "llm")
# The defaults are the cpu-demo preset; each other preset names what it changes.
PRESETS = {
    "cpu-demo": {},
    "smoke": {"budget_s": 3.0, "evals": 8, "hours": 0.05, "noise_repeats": 2, "population_size": 4,
              "eval_tokens": 8192},
    "gpu-5min": {"budget_s": 300.0, "evals": 0, "hours": 8.0, "genomes": ("genomes/nanochat_gpu.py",),
                 "tokenizer": "bpe:8192", "eval_tokens": 1048576, "eval_seq_len": 2048, "population_size": 16},
}


def _key(default, section: str, comment: str, *, choices: tuple = (), minimum: float | None = None,
         flag: str | None = None):
    """A config field: its default plus what the schema, the example and the flags need."""
    meta = {"section": section, "comment": comment, "choices": choices, "minimum": minimum, "flag": flag}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunConfig:
    """The resolved configuration of one run (every key has a value)."""

    preset: str = _key("cpu-demo", "run", "starting point for every other key", choices=tuple(PRESETS),
                       flag="--preset")
    out: str = _key("", "run", "run directory (empty: logs/<timestamp>-<preset>)", flag="--out")
    genomes: tuple = _key(("genomes/tiny_cpu.py",), "run", "seed genome scripts", flag="--genome")
    data: str = _key("builtin", "run", "data source: " + SOURCE_GRAMMAR, flag="--data")
    allow_unsealed: bool = _key(False, "run", "run even if a genome could read eval documents at this sandbox "
                                "level (the run is stamped unsealed)", flag="--allow-unsealed")
    tokenizer: str = _key("byte", "run", "byte | bpe:VOCAB (trained on the train split only)", flag="--tokenizer")
    seed: int = _key(0, "run", "run seed: operator choices and harness seeds derive from it", minimum=0,
                     flag="--seed")
    evals: int = _key(20, "run", "stop after this many finished evaluations (0: no limit)", minimum=0,
                      flag="--evals")
    hours: float = _key(0.22, "run", "stop starting new slots after this many hours (0: no limit)", minimum=0,
                        flag="--hours")
    budget_s: float = _key(30.0, "slots", "training wall-clock budget of one slot, seconds", minimum=0.5,
                           flag="--budget")
    slots: int = _key(0, "slots", "parallel slots (0: one per visible GPU, else 1 on CPU)", minimum=0,
                      flag="--slots")
    device: str = _key("auto", "slots", "auto | cpu | cuda")
    sandbox: str = _key("auto", "slots", "auto | bwrap | netns | none", choices=("auto", "bwrap", "netns", "none"))
    grace_s: float = _key(0.0, "slots", "seconds past the budget before the hard kill (0: max(20, 20% of budget))",
                          minimum=0)
    eval_tokens: int = _key(32768, "slots", "tokens scored per eval split", minimum=512)
    eval_seq_len: int = _key(256, "slots", "context length the scorer feeds the model", minimum=8)
    contended_share: float = _key(0.4, "slots", "a CPU slot whose processes got less than this share of its "
                                  "threads' time was starved: re-run, not folded in (0: never)", minimum=0)
    warm: str = _key("auto", "slots", "start the next genome's interpreter near a slot's end (bwrap) or while "
                     "it is scored, and keep the scorer (each genome still gets fresh processes); auto: on GPU "
                     "slots, and on CPU slots that leave cores idle (where the slots use every core it only moves "
                     "the imports' CPU into the slot before)",
                     choices=("auto", "on", "off"))
    dask_scheduler: str = _key("", "slots", "address of a running Dask scheduler whose workers run the slots "
                               "(empty: local slots, or the [cluster] table)", flag="--dask-scheduler")
    scheduler_wait_s: float = _key(60.0, "slots", "how long a lost Dask scheduler is waited for before the run "
                                   "stops (resumably)", minimum=1)
    kind: str = _key("", "cluster", "start the Dask workers as batch jobs through dask-jobqueue: slurm | pbs | "
                     "sge | lsf (empty: none are started)", choices=("", "slurm", "pbs", "sge", "lsf"))
    jobs: int = _key(1, "cluster", "batch jobs to submit, one Dask worker each", minimum=1)
    queue: str = _key("", "cluster", "queue or partition (empty: the batch system's default)")
    account: str = _key("", "cluster", "account or project to charge (empty: none)")
    gpus_per_job: int = _key(1, "cluster", "GPUs per job: one slot each (0: one CPU slot per job)", minimum=0)
    cores_per_job: int = _key(8, "cluster", "CPU cores per job", minimum=1)
    memory_per_job: str = _key("64GB", "cluster", "memory per job")
    walltime: str = _key("08:00:00", "cluster", "wall-clock limit per job")
    job_directives: tuple = _key((), "cluster", "extra lines for the job script's header, e.g. "
                                 "\"--constraint=h100\"")
    worker_setup: tuple = _key((), "cluster", "shell lines each job runs before its worker starts, e.g. "
                               "\"source .venv/bin/activate\"")
    population_size: int = _key(6, "search", "individuals kept in the population", minimum=2)
    tournament_size: int = _key(3, "search", "aspirants per tournament", minimum=1)
    gp_share: float = _key(1.0, "search", "share of offline children proposed by Gaussian-process BO (Optuna's "
                           "GPSampler) over the parent structure's knob study", minimum=0, flag="--gp-share")
    tpe_share: float = _key(0.0, "search", "share of offline children proposed by TPE (Optuna) over the parent "
                            "structure's knob study", minimum=0, flag="--tpe-share")
    cmaes_share: float = _key(0.0, "search", "share of offline children proposed by CMA-ES over the parent "
                              "structure's knob study", minimum=0, flag="--cmaes-share")
    crossover_rate: float = _key(0.0, "search", "share of offline children made by knob crossover (the rest of "
                                 "the shares: random knob steps)", minimum=0)
    noise_repeats: int = _key(3, "fitness", "evaluations of the seed (fresh seeds) that measure the noise floor",
                              minimum=2)
    min_noise_floor: float = _key(0.002, "fitness", "lower bound on the noise floor, bpb", minimum=0)
    confidence: float = _key(0.95, "fitness", "crown a candidate once P(better than the best) reaches this "
                             "(t on the pooled noise model)", minimum=0.5, flag="--confidence")
    candidate_confidence: float = _key(0.8, "fitness", "a child whose first evaluation gives P(better than the "
                                       "best) at least this is re-evaluated as a candidate", minimum=0.5)
    max_candidate_evals: int = _key(5, "fitness", "evaluations of a candidate before it is given up (not "
                                    "confirmed)", minimum=2)
    threshold: float = _key(0.0, "fitness", "Thresholdout threshold, bpb (0: 2 x noise floor)", minimum=0)
    holdout_noise: float = _key(0.0, "fitness", "Thresholdout Laplace scale, bpb (0: noise floor / 2)", minimum=0)
    holdout_budget: int = _key(40, "fitness", "held-out reveals allowed before Thresholdout stops answering",
                               minimum=0)
    penalty_weight: float = _key(1.0, "fitness", "bpb of penalty per bpb of answered gap beyond the noise floor",
                                 minimum=0)
    llm: LLMConfig = field(default_factory=LLMConfig)  # [llm]: see docs/llm.md

    def to_toml(self) -> str:
        """The resolved config as TOML (written to RUN_DIR/run.toml)."""
        return render_toml({k.name: getattr(self, k.name) for k in SCHEMA}, llm=self.llm)

    def to_dict(self) -> dict:
        """Plain data for the journal (the [llm] table holds variable names only, never keys)."""
        values = {k.name: getattr(self, k.name) for k in SCHEMA}
        lists = {k.name: list(values[k.name]) for k in SCHEMA if k.type is tuple}  # JSON has no tuples
        return {**values, **lists, "llm": _llm_plain(self.llm)}

    @classmethod
    def from_dict(cls, saved: dict, overrides: dict | None = None) -> "RunConfig":
        """A journaled config (keys a newer evo dropped are ignored, keys it added take defaults, or
        what the run behaved as before they existed: `BEFORE_KEY`)."""
        values = {k: v for k, v in BEFORE_KEY.items() if k not in saved}
        values.update({k: v for k, v in saved.items() if k in KEYS})
        values.update({k.name: tuple(values[k.name]) for k in SCHEMA if k.type is tuple and k.name in values})
        values.setdefault("genomes", KEYS["genomes"].default)
        llm = LLMConfig.from_dict(saved.get("llm") or {})
        return dataclasses.replace(cls(), **{**values, "llm": llm, **(overrides or {})})


def _llm_plain(llm: LLMConfig) -> dict:
    return {k: v for k, v in llm.to_dict().items() if v is not None} if llm.enabled else {}


@dataclass(frozen=True)
class Key:
    """One configuration key, as `SCHEMA` lists it (derived from a `RunConfig` field)."""

    name: str
    section: str
    type: type
    default: object
    comment: str
    choices: tuple = ()
    minimum: float | None = None
    flag: str | None = None


SCHEMA = tuple(Key(f.name, type=type(f.default), default=f.default, **f.metadata)
               for f in dataclasses.fields(RunConfig) if f.name != "llm")
KEYS = {k.name: k for k in SCHEMA}
BEFORE_KEY = {"gp_share": 0.0}  # a run journaled before this key existed behaves as with this value
SHARES = ("gp_share", "tpe_share", "cmaes_share", "crossover_rate")  # of offline children; the rest: random steps


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
    if key.type is float and not math.isfinite(value):
        raise UserError(f"{where}: {value!r} is not a finite number")
    if key.minimum is not None and value < key.minimum:
        raise UserError(f"{where}: {value!r} is too small; it must be >= {key.minimum}")
    if key.name == "device" and not (value in ("auto", "cpu") or value.startswith("cuda")):
        raise UserError(f"{where}: {value!r} is not a device; allowed values: auto, cpu, cuda, cuda:N")
    if key.name == "genomes" and not value:
        raise UserError(f"{where}: give at least one seed genome")
    if key.name == "data":
        parse_source(value)  # one grammar: a malformed source is refused before anything is written
    return value


def check_value(name: str, value):
    """Validate one key's value (for overrides applied outside `resolve`, e.g. `evo resume --evals`)."""
    if name not in KEYS:
        raise UserError(f"unknown config key {name!r}")
    return _check(KEYS[name], value, f"{KEYS[name].section}.{name}")


def read_toml(path: str | Path) -> dict:
    """Flatten a run.toml into {key: value}, checking sections and keys; [llm] becomes an LLMConfig."""
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
            flat["llm"] = LLMConfig.from_dict(body, base_dir=Path(path).resolve().parent)
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
    _check_shares(values)
    for name in list(values):
        if name == "llm":
            if not isinstance(values[name], LLMConfig):
                values[name] = LLMConfig.from_dict(values[name])
            continue
        if name not in KEYS:
            raise UserError(f"unknown config key {name!r}")
        values[name] = _check(KEYS[name], values[name], f"{KEYS[name].section}.{name}")
    return dataclasses.replace(RunConfig(), **values)


def _check_shares(values: dict) -> None:
    shares = {k: values.get(k, KEYS[k].default) for k in SHARES}
    total = sum(v for v in shares.values() if isinstance(v, (int, float)))
    if total > 1 + 1e-9:
        listed = ", ".join(f"{k} = {v}" for k, v in shares.items())
        raise UserError(f"search shares add up to {total:g} > 1 ({listed}); "
                        "lower them so that what is left (random knob steps) is not negative")


# ------------------------------------------------------------------ command-line flags from the schema
def add_flags(parser) -> None:
    """`evo run`'s config flags: one per key that declares a flag, help from its comment."""
    for key in SCHEMA:
        if not key.flag:
            continue
        help_text = key.comment
        if key.type is bool:
            parser.add_argument(key.flag, dest=key.name, action="store_true", default=None, help=help_text)
        elif key.type is tuple:
            parser.add_argument(key.flag, dest=key.name, action="append", help=help_text + " (repeatable)")
        else:
            parser.add_argument(key.flag, dest=key.name, type=key.type, help=help_text)


def flag_values(args) -> dict:
    """The config keys given on the command line (None: not given)."""
    return {k.name: getattr(args, k.name, None) for k in SCHEMA if k.flag}


# ------------------------------------------------------------------ TOML rendering
def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def render_toml(values: dict, llm: LLMConfig | None = None, comments: bool = True) -> str:
    lines = []
    for section in SECTIONS[:-1]:
        lines.append(f"[{section}]")
        for key in SCHEMA:
            if key.section == section:
                comment = f"  # {key.comment}" if comments else ""
                lines.append(f"{key.name} = {_toml_value(values.get(key.name, key.default))}{comment}")
        lines.append("")
    plain = _llm_plain(llm) if llm is not None else {}
    if plain:
        lines.append("[llm]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in plain.items() if k != "models")
        for model in plain.get("models", []):
            lines.append("[[llm.models]]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in model.items() if v is not None)
    return "\n".join(lines).rstrip() + "\n"


def example_toml() -> str:
    """The documented example: every key, its default and a one-line comment. Keys are commented
    out, so that copying the file changes nothing until a line is uncommented (a value set here
    would override the preset)."""
    presets = "; ".join(f"{n}: {v or 'the defaults'}" for n, v in PRESETS.items())
    header = ("# evo run configuration (`evo run --config run.toml`). Every key is optional; each is shown\n"
              "# commented out, with its default. Precedence: defaults < preset < this file < flags.\n"
              f"# Presets: {presets}\n\n")
    body = "\n".join(line if not line or line.startswith("[") else "# " + line
                     for line in render_toml({k.name: k.default for k in SCHEMA}).splitlines())
    return header + body + (
        "\n\n# [llm] (optional): LLM operators through any OpenAI-compatible endpoint; see docs/llm.md.\n")
