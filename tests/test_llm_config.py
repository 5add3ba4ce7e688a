"""The [llm] config: every key validated, keys checked at start, flags, the documented example."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from evo.llm_config import LLMConfig, ModelConfig
from gpt.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "llm.md"


def one_model(**extra):
    return {"models": [{"model": "m", "base_url": "http://127.0.0.1:9/v1", **extra}]}


def test_no_section_is_disabled():
    assert not LLMConfig().enabled
    assert not LLMConfig.from_dict(None).enabled
    assert not LLMConfig.from_dict({}).enabled
    assert LLMConfig.from_dict(one_model()).enabled


def test_full_section_parses():
    cfg = LLMConfig.from_dict({
        "share": 0.5, "budget_usd": 3, "crossover_rate": 0.1, "selection": "ucb", "summary_every": 0,
        "max_retries": 2, "history_rows": 5, "backoff_s": 0.5, "max_backoff_s": 10,
        "models": [{"model": "a", "base_url": "https://openrouter.ai/api/v1/", "api_key_env": "OPENROUTER_API_KEY",
                    "weight": 2, "price_in_per_m": 1.25, "price_out_per_m": 10, "temperature": 0,
                    "max_tokens": 100, "timeout_s": 5},
                   {"model": "b", "base_url": "http://localhost:11434/v1", "api_key_env": ""}]})
    assert cfg.share == 0.5 and cfg.budget_usd == 3.0 and cfg.selection == "ucb" and cfg.summary_every == 0
    a, b = cfg.models
    assert a == ModelConfig("a", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", 2.0, 1.25, 10.0, 0.0, 100, 5.0)
    assert b.api_key_env == "" and b.weight == 1.0
    assert cfg.key_variables() == ("OPENROUTER_API_KEY",)
    assert a.cost_usd(1_000_000, 100_000) == pytest.approx(1.25 + 1.0)
    assert "OPENROUTER_API_KEY" in str(cfg.to_dict())


@pytest.mark.parametrize("d, needle", [
    ({"shares": 0.5}, "llm.shares"),
    ({"share": 1.5}, "llm.share must be a number from 0 to 1"),
    ({"share": "most"}, "llm.share"),
    ({"share": True}, "llm.share"),
    ({"budget_usd": 0}, "llm.budget_usd must be a number > 0"),
    ({"crossover_rate": -0.1}, "llm.crossover_rate"),
    ({"selection": "random"}, "llm.selection must be one of 'weight', 'ucb'"),
    ({"summary_every": 2.5}, "llm.summary_every must be a whole number"),
    ({"brief_mode": "append"}, "llm.brief_mode must be one of 'extend', 'replace'"),
    ({"brief_mode": "replace"}, "llm.brief_mode = \"replace\" needs llm.brief"),
    ({"max_retries": -1}, "llm.max_retries"),
    ({"models": {"model": "x"}}, "llm.models must be an array of tables"),
    ({"models": ["gpt"]}, "llm.models[0] must be a table"),
    ({"models": [{"base_url": "http://x/v1"}]}, "llm.models[0].model is missing"),
    ({"models": [{"model": "a"}, {"model": "b", "temprature": 1}]}, "llm.models[1].temprature"),
    ({"models": [{"model": "a", "temperature": 3}]}, "llm.models[0].temperature must be a number from 0 to 2"),
    ({"models": [{"model": "a", "max_tokens": 0}]}, "llm.models[0].max_tokens"),
    ({"models": [{"model": "a", "timeout_s": 0}]}, "llm.models[0].timeout_s must be a number > 0"),
    ({"models": [{"model": "a", "weight": -1}]}, "llm.models[0].weight"),
    ({"models": [{"model": "a", "weight": 0}]}, "weight > 0"),
    ({"models": [{"model": "a", "price_in_per_m": "cheap"}]}, "llm.models[0].price_in_per_m"),
    ({"models": [{"model": "a", "base_url": "api.openai.com"}]}, "llm.models[0].base_url must be an http"),
    ({"models": [{"model": "a"}, {"model": "a"}]}, "llm.models[1].model = 'a' repeats llm.models[0]"),
    ({"models": [{"model": "a", "api_key_env": 42}]}, "llm.models[0].api_key_env must be a string"),
])
def test_mistakes_name_the_key(d, needle):
    with pytest.raises(UserError) as err:
        LLMConfig.from_dict(d)
    assert needle in str(err.value)


def test_unknown_key_lists_allowed_keys():
    with pytest.raises(UserError, match=r"unknown key llm\.budget; allowed keys in llm: .*budget_usd"):
        LLMConfig.from_dict({"budget": 1})


def test_a_pasted_key_is_refused_without_echoing_it():
    secret = "sk-proj-ABCDEF1234567890abcdef"
    with pytest.raises(UserError) as err:
        LLMConfig.from_dict(one_model(api_key_env=secret))
    assert secret not in str(err.value) and "NAME" in str(err.value)


def test_check_keys_names_variable_and_model():
    cfg = LLMConfig.from_dict({"models": [{"model": "a", "api_key_env": "EVO_TEST_KEY_A"},
                                          {"model": "local", "base_url": "http://localhost:8000/v1", "api_key_env": ""},
                                          {"model": "b", "api_key_env": "EVO_TEST_KEY_B"}]})
    with pytest.raises(UserError) as err:
        cfg.check_keys({"EVO_TEST_KEY_B": "set"})
    text = str(err.value)
    assert "EVO_TEST_KEY_A" in text and "'a'" in text and "llm.models[0]" in text and "EVO_TEST_KEY_B" not in text
    with pytest.raises(UserError, match="EVO_TEST_KEY_B"):
        cfg.check_keys({"EVO_TEST_KEY_A": "x", "EVO_TEST_KEY_B": ""})  # empty counts as unset
    cfg.check_keys({"EVO_TEST_KEY_A": "x", "EVO_TEST_KEY_B": "y"})
    assert cfg.key_variables() == ("EVO_TEST_KEY_A", "EVO_TEST_KEY_B")


def test_paths_resolve_against_base_dir(tmp_path):
    (tmp_path / "brief.md").write_text("Use bf16.")
    (tmp_path / "prompts").mkdir()
    cfg = LLMConfig.from_dict({"brief": "brief.md", "prompts_dir": "prompts", "brief_mode": "replace"},
                              base_dir=tmp_path)
    assert cfg.brief == str(tmp_path / "brief.md") and cfg.prompts_dir == str(tmp_path / "prompts")
    with pytest.raises(UserError, match=r"llm\.brief = 'nope\.md': no such file"):
        LLMConfig.from_dict({"brief": "nope.md"}, base_dir=tmp_path)
    with pytest.raises(UserError, match=r"llm\.prompts_dir = 'brief\.md': no such folder"):
        LLMConfig.from_dict({"prompts_dir": "brief.md"}, base_dir=tmp_path)


def test_flags():
    assert LLMConfig.from_flags() == LLMConfig()
    cfg = LLMConfig.from_flags("gpt-4.1-mini")
    assert cfg.models == (ModelConfig("gpt-4.1-mini", "https://api.openai.com/v1", "OPENAI_API_KEY"),)
    base = LLMConfig.from_dict({"budget_usd": 2, "models": [{"model": "x", "base_url": "http://localhost:11434/v1",
                                                             "api_key_env": ""}]})
    cfg = LLMConfig.from_flags("qwen", "http://localhost:8000/v1/", "", base=base)
    assert cfg.budget_usd == 2 and [m.model for m in cfg.models] == ["x", "qwen"]
    assert cfg.models[1].base_url == "http://localhost:8000/v1" and cfg.models[1].api_key_env == ""
    with pytest.raises(UserError, match="pass --llm too"):
        LLMConfig.from_flags(base_url="http://localhost:8000/v1", base=base)
    with pytest.raises(UserError, match="--llm-base-url must be an http"):
        LLMConfig.from_flags("m", "localhost:8000")
    with pytest.raises(UserError, match="--llm-key-env must be the NAME"):
        LLMConfig.from_flags("m", api_key_env="sk-abc-def")
    with pytest.raises(UserError, match="already has this model"):
        LLMConfig.from_flags("x", base=base)


def test_price_flags_set_the_flag_models_prices_and_need_the_model(capsys):
    cfg = LLMConfig.from_flags("gpt-4.1-mini", price_in=0.4, price_out=1.6)
    assert (cfg.models[0].price_in_per_m, cfg.models[0].price_out_per_m) == (0.4, 1.6)
    assert cfg.models[0].cost_usd(1_000_000, 500_000) == pytest.approx(0.4 + 0.8)
    with pytest.raises(UserError, match="--llm-price-in.*pass --llm too"):
        LLMConfig.from_flags(price_in=1.0)
    with pytest.raises(UserError, match="--llm-price-out"):
        LLMConfig.from_flags("m", price_out=-1.0)
    # through the command line: a bad price is refused before anything is set up
    from evo.cli import main
    assert main(["run", "--llm", "m", "--llm-price-in", "-3", "--out", "/nonexistent/x"]) != 0
    assert "--llm-price-in" in capsys.readouterr().err


def test_the_llm_share_defaults_to_the_centaur_ablations_three_tenths():
    assert LLMConfig().share == 0.3


def test_documented_section_is_valid(tmp_path):
    """The [llm] example in docs/llm.md parses and shows every key."""
    block = re.search(r"```toml\n(.*?)```", DOCS.read_text(), re.S).group(1)
    (tmp_path / "brief.md").write_text("notes")
    (tmp_path / "prompts").mkdir()
    cfg = LLMConfig.from_dict(tomllib.loads(block)["llm"], base_dir=tmp_path)
    assert len(cfg.models) == 2 and cfg.models[1].api_key_env == ""
    import dataclasses
    for f in dataclasses.fields(LLMConfig):
        if f.name != "models":
            assert re.search(rf"^{f.name} = ", block, re.M), f"docs/llm.md does not show llm.{f.name}"
    for f in dataclasses.fields(ModelConfig):
        assert re.search(rf"^{f.name} = ", block, re.M), f"docs/llm.md does not show llm.models[].{f.name}"


NO_LLM_PACKAGES = """
import sys

class Unimportable:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("openai", "libcst") or name.split(".")[:2] in (["evo", "llm"], ["evo", "operators"]):
            raise ImportError("unimportable here: " + name)

sys.meta_path.insert(0, Unimportable())
from evo.llm_config import LLMConfig
cfg = LLMConfig.from_dict({"models": [{"model": "m", "api_key_env": ""}], "selection": "ucb", "budget_usd": 2.0})
assert cfg.enabled and cfg.to_dict()["selection"] == "ucb"
print(sorted(m for m in sys.modules if m.split(".")[0] in ("evo", "openai", "libcst")))
"""


def test_config_reads_without_openai_libcst_or_the_llm_package():
    """`evo status` reads a run's typed [llm] config where none of those can be imported."""
    done = subprocess.run([sys.executable, "-c", NO_LLM_PACKAGES], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['evo', 'evo.llm_config']"


def test_models_without_prices_are_named_in_a_warning_that_says_the_budget_cannot_stop_them():
    from evo.breeding import price_warnings

    priced = LLMConfig.from_dict({"models": [{"model": "a", "price_in_per_m": 1.0, "price_out_per_m": 2.0}]})
    assert price_warnings(priced) == []
    free = LLMConfig.from_dict({"budget_usd": 5.0, "models": [{"model": "a", "price_in_per_m": 1.0},
                                                              {"model": "local", "api_key_env": ""}]})
    (warning,) = price_warnings(free)
    assert "local" in warning and "a," not in warning and "budget_usd = 5 cannot stop them" in warning
    assert "price_in_per_m" in warning
