"""The `[llm]` section of run.toml, validated.

    [llm]
    share = 0.3               # fraction of children made by LLM operators (the rest: knob operators)
    budget_usd = 5.0          # whole-run spend limit; then knob operators only
    [[llm.models]]
    model = "gpt-4.1-mini"
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY"   # the NAME of the variable holding the key, never the key

With no `[llm]` section (and no `--llm` flag) `LLMConfig()` is disabled and runs stay offline.
Every mistake is a `UserError` naming the key (`llm.<key>`, `llm.models[i].<key>`) and what is
allowed. See docs/llm.md for every key.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from gpt.errors import UserError

SELECTIONS = ("weight", "ucb")
BRIEF_MODES = ("extend", "replace")
DEFAULT_BASE_URL = "https://api.openai.com/v1"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class ModelConfig:
    """One model endpoint. Prices are US dollars per million tokens."""

    model: str
    base_url: str = DEFAULT_BASE_URL
    api_key_env: str = "OPENAI_API_KEY"  # "" = the endpoint needs no key (a local server)
    weight: float = 1.0
    price_in_per_m: float = 0.0
    price_out_per_m: float = 0.0
    temperature: float = 0.7
    max_tokens: int = 4096
    timeout_s: float = 120.0

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price_in_per_m + completion_tokens * self.price_out_per_m) / 1e6

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "llm.models[0]") -> "ModelConfig":
        """Validate one `[[llm.models]]` table; `where` names it in error messages."""
        return _model_from_dict(d, where)


@dataclass(frozen=True)
class LLMConfig:
    """Everything about LLM operators for one run. `LLMConfig()` (no models) is disabled."""

    models: tuple[ModelConfig, ...] = ()
    share: float = 0.3  # fraction of children made by LLM operators (Centaur's ablation: 0.3)
    budget_usd: float | None = None  # None: no limit
    crossover_rate: float = 0.2  # fraction of LLM children made by crossover (the rest: mutation)
    selection: str = "weight"  # "weight" | "ucb"
    summary_every: int = 20  # evaluations between run-memory notes; 0 = no notes
    brief: str | None = None  # path of a user brief (the analogue of program.md)
    brief_mode: str = "extend"  # "extend" the built-in brief, or "replace" it
    prompts_dir: str | None = None  # folder whose *.txt override the packaged templates
    max_retries: int = 4  # retries of one call after a fault (so up to max_retries + 1 attempts)
    history_rows: int = 20  # recent children shown in prompts
    backoff_s: float = 2.0  # first retry wait; doubles each retry, with jitter
    max_backoff_s: float = 60.0  # longest wait between retries; a longer Retry-After drops the child

    @property
    def enabled(self) -> bool:
        return bool(self.models)

    def key_variables(self) -> tuple[str, ...]:
        """Names of the environment variables that hold API keys (never to be copied anywhere)."""
        return tuple(sorted({m.api_key_env for m in self.models if m.api_key_env}))

    def check_keys(self, environ: Mapping[str, str] | None = None) -> None:
        """UserError when a model's key variable is unset or empty. Call at start, before any slot."""
        environ = os.environ if environ is None else environ
        missing = [(i, m) for i, m in enumerate(self.models) if m.api_key_env and not environ.get(m.api_key_env)]
        if missing:
            lines = [f"model {m.model!r} (llm.models[{i}]) reads its API key from the environment variable "
                     f"{m.api_key_env}, which is not set" for i, m in missing]
            raise UserError("; ".join(lines) + ". Export the variable (e.g. `export "
                            f"{missing[0][1].api_key_env}=...`), or set api_key_env = \"\" for a local server "
                            "that needs no key.")

    def to_dict(self) -> dict:
        """Plain data for the journal (holds variable names only, never keys)."""
        return dataclasses.asdict(self)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, base_dir: str | os.PathLike | None = None) -> "LLMConfig":
        """Validate the `[llm]` table of run.toml. Relative `brief` / `prompts_dir` paths are
        resolved against `base_dir` (the folder of run.toml) and must exist."""
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise UserError(f"llm must be a table ([llm] in run.toml), got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        _unknown(d, known, "llm")
        kwargs: dict[str, Any] = {}
        models = d.get("models", [])
        if not isinstance(models, (list, tuple)):
            raise UserError("llm.models must be an array of tables ([[llm.models]] in run.toml), "
                            f"got {type(models).__name__}")
        kwargs["models"] = tuple(ModelConfig.from_dict(m, f"llm.models[{i}]") for i, m in enumerate(models))
        names = [m.model for m in kwargs["models"]]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise UserError(f"llm.models[{i}].model = {name!r} repeats llm.models[{names.index(name)}]; "
                                "each model may appear once (costs and rewards are kept per model name)")
        if kwargs["models"] and sum(m.weight for m in kwargs["models"]) <= 0:
            raise UserError("llm.models[*].weight: at least one model needs a weight > 0")
        if "share" in d:
            kwargs["share"] = _number(d, "share", "llm", lo=0.0, hi=1.0)
        if "budget_usd" in d:
            kwargs["budget_usd"] = _number(d, "budget_usd", "llm", lo=0.0, lo_open=True, optional=True)
        if "crossover_rate" in d:
            kwargs["crossover_rate"] = _number(d, "crossover_rate", "llm", lo=0.0, hi=1.0)
        if "selection" in d:
            kwargs["selection"] = _choice(d, "selection", "llm", SELECTIONS)
        if "summary_every" in d:
            kwargs["summary_every"] = _integer(d, "summary_every", "llm", lo=0)
        if "brief" in d:
            kwargs["brief"] = _path(d, "brief", "llm", base_dir, want_dir=False)
        if "brief_mode" in d:
            kwargs["brief_mode"] = _choice(d, "brief_mode", "llm", BRIEF_MODES)
        if "prompts_dir" in d:
            kwargs["prompts_dir"] = _path(d, "prompts_dir", "llm", base_dir, want_dir=True)
        if "max_retries" in d:
            kwargs["max_retries"] = _integer(d, "max_retries", "llm", lo=0, hi=20)
        if "history_rows" in d:
            kwargs["history_rows"] = _integer(d, "history_rows", "llm", lo=0)
        if "backoff_s" in d:
            kwargs["backoff_s"] = _number(d, "backoff_s", "llm", lo=0.0)
        if "max_backoff_s" in d:
            kwargs["max_backoff_s"] = _number(d, "max_backoff_s", "llm", lo=0.0)
        if kwargs.get("brief_mode") == "replace" and not kwargs.get("brief"):
            raise UserError('llm.brief_mode = "replace" needs llm.brief, the path of your own brief file')
        return cls(**kwargs)

    @classmethod
    def from_flags(cls, model: str | None = None, base_url: str | None = None, api_key_env: str | None = None,
                   base: "LLMConfig | None" = None, price_in: float | None = None,
                   price_out: float | None = None) -> "LLMConfig":
        """Apply `--llm MODEL [--llm-base-url URL] [--llm-key-env NAME] [--llm-price-in USD]
        [--llm-price-out USD]` on top of `base` (the validated [llm] table, or defaults): the flag
        model is added to the table's models, with base_url defaulting to OpenAI's, api_key_env to
        OPENAI_API_KEY and the prices (US dollars per million tokens) to 0 (a warning at start)."""
        base = base or cls()
        if model is None:
            if any(v is not None for v in (base_url, api_key_env, price_in, price_out)):
                raise UserError("--llm-base-url, --llm-key-env, --llm-price-in and --llm-price-out describe the "
                                "model given with --llm MODEL; pass --llm too")
            return base
        fields: dict[str, Any] = {"model": model}
        for key, value in (("base_url", base_url), ("api_key_env", api_key_env), ("price_in_per_m", price_in),
                           ("price_out_per_m", price_out)):
            if value is not None:
                fields[key] = value
        try:
            added = ModelConfig.from_dict(fields, "--llm")
        except UserError as exc:  # name the flags, not table keys
            text = str(exc).replace("--llm.base_url", "--llm-base-url").replace("--llm.api_key_env", "--llm-key-env")
            text = text.replace("--llm.price_in_per_m", "--llm-price-in").replace("--llm.price_out_per_m",
                                                                                  "--llm-price-out")
            raise UserError(text.replace("--llm.model", "--llm")) from None
        if any(m.model == model for m in base.models):
            raise UserError(f"--llm {model}: run.toml's [[llm.models]] already has this model; drop the flag or "
                            "the table entry")
        return dataclasses.replace(base, models=base.models + (added,))


def _model_from_dict(d: Any, where: str) -> ModelConfig:
    if not isinstance(d, Mapping):
        raise UserError(f"{where} must be a table with at least `model`, got {type(d).__name__}")
    _unknown(d, {f.name for f in dataclasses.fields(ModelConfig)}, where)
    if "model" not in d:
        raise UserError(f"{where}.model is missing: name the model, e.g. model = \"gpt-4.1-mini\"")
    kwargs: dict[str, Any] = {"model": _string(d, "model", where)}
    if "base_url" in d:
        url = _string(d, "base_url", where)
        if not re.match(r"^https?://[^/\s]+", url):
            raise UserError(f"{where}.base_url must be an http:// or https:// URL such as "
                            f"{DEFAULT_BASE_URL} or http://localhost:8000/v1, got {url!r}")
        kwargs["base_url"] = url.rstrip("/")
    if "api_key_env" in d:
        name = d["api_key_env"]
        if not isinstance(name, str):
            raise UserError(f"{where}.api_key_env must be a string: the name of an environment variable, or \"\"")
        if name and not _ENV_NAME.match(name):
            # Never echo the value: a user may have pasted the key itself here.
            raise UserError(f"{where}.api_key_env must be the NAME of the environment variable that holds the "
                            "key (letters, digits and _, e.g. \"OPENAI_API_KEY\"), never the key itself; "
                            "use \"\" for a local server that needs no key")
        kwargs["api_key_env"] = name
    if "weight" in d:
        kwargs["weight"] = _number(d, "weight", where, lo=0.0)
    if "price_in_per_m" in d:
        kwargs["price_in_per_m"] = _number(d, "price_in_per_m", where, lo=0.0)
    if "price_out_per_m" in d:
        kwargs["price_out_per_m"] = _number(d, "price_out_per_m", where, lo=0.0)
    if "temperature" in d:
        kwargs["temperature"] = _number(d, "temperature", where, lo=0.0, hi=2.0)
    if "max_tokens" in d:
        kwargs["max_tokens"] = _integer(d, "max_tokens", where, lo=1)
    if "timeout_s" in d:
        kwargs["timeout_s"] = _number(d, "timeout_s", where, lo=0.0, lo_open=True)
    return ModelConfig(**kwargs)


# -------------------------------------------------------------------- validators
def _unknown(d: Mapping, known: set[str], where: str) -> None:
    extra = sorted(set(d) - known)
    if extra:
        raise UserError(f"unknown key {where}.{extra[0]}; allowed keys in {where}: {', '.join(sorted(known))}")


def _string(d: Mapping, key: str, where: str) -> str:
    value = d[key]
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}.{key} must be a non-empty string, got {value!r}")
    return value.strip()


def _number(d: Mapping, key: str, where: str, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False, optional: bool = False) -> float | None:
    value = d[key]
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}.{key} must be a number{_range(lo, hi, lo_open)}, got {value!r}")
    if (lo is not None and (value < lo or (lo_open and value == lo))) or (hi is not None and value > hi):
        raise UserError(f"{where}.{key} must be a number{_range(lo, hi, lo_open)}, got {value!r}")
    return float(value)


def _integer(d: Mapping, key: str, where: str, lo: int | None = None, hi: int | None = None) -> int:
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, int) or (lo is not None and value < lo) \
            or (hi is not None and value > hi):
        raise UserError(f"{where}.{key} must be a whole number{_range(lo, hi, False)}, got {value!r}")
    return value


def _range(lo, hi, lo_open) -> str:
    if lo is not None and hi is not None:
        return f" from {lo:g} to {hi:g}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo:g}"
    return ""


def _choice(d: Mapping, key: str, where: str, allowed: tuple[str, ...]) -> str:
    value = d[key]
    if value not in allowed:
        raise UserError(f"{where}.{key} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")
    return value


def _path(d: Mapping, key: str, where: str, base_dir, want_dir: bool) -> str | None:
    value = d[key]
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}.{key} must be a path string, got {value!r}")
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if want_dir and not path.is_dir():
        raise UserError(f"{where}.{key} = {value!r}: no such folder ({path}); it should hold template files "
                        "such as mutate.txt")
    if not want_dir and not path.is_file():
        raise UserError(f"{where}.{key} = {value!r}: no such file ({path}); it should be a text file with "
                        "your research brief")
    return str(path)
