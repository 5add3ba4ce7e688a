"""Run configuration: presets, precedence (defaults < preset < TOML < flags), the documented
example, and named errors for bad config files (exit 2, nothing written)."""
from __future__ import annotations

import dataclasses
import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from evo import config as cfg
from evo.cli import build_parser, main

from gpt.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "run.toml"


# ---------------------------------------------------------------- presets
def test_cpu_demo_is_the_default_preset_and_evolves_genomes_tiny_cpu():
    config = cfg.resolve()
    assert config.preset == "cpu-demo"
    assert config.genomes == ("genomes/tiny_cpu.py",)
    assert (REPO / config.genomes[0]).is_file()
    assert config.budget_s == 30.0


def test_smoke_preset_is_a_few_second_budget_and_a_handful_of_evaluations():
    config = cfg.resolve(overrides={"preset": "smoke"})
    assert config.budget_s == pytest.approx(3.0)
    assert config.evals == 8
    assert config.noise_repeats >= 2
    assert config.population_size <= config.evals


def test_gpu_5min_preset_gives_each_slot_300_seconds():
    config = cfg.resolve(overrides={"preset": "gpu-5min"})
    assert config.budget_s == 300.0
    assert config.genomes != cfg.RunConfig().genomes


@pytest.mark.parametrize("preset", sorted(cfg.PRESETS))
def test_every_preset_resolves_to_valid_values(preset):
    config = cfg.resolve(overrides={"preset": preset})
    for key in cfg.SCHEMA:  # every value passes the same checks a config file gets
        assert cfg._check(key, getattr(config, key.name), key.name) == getattr(config, key.name)


def test_an_unknown_preset_is_a_user_error_listing_the_presets():
    with pytest.raises(UserError, match="cpu-demo, smoke, gpu-5min"):
        cfg.resolve(overrides={"preset": "huge"})


# ---------------------------------------------------------------- precedence
def test_precedence_is_defaults_then_preset_then_toml_then_flags(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('[run]\npreset = "smoke"\nevals = 5\nseed = 7\n[slots]\nbudget_s = 7\n')
    args = build_parser().parse_args(["run", "--config", str(toml), "--evals", "9", "--out", str(tmp_path / "o")])
    config = cfg.resolve(cfg.read_toml(args.config), cfg.flag_values(args))
    assert config.preset == "smoke"                # chosen in the TOML file
    assert config.min_noise_floor == cfg.KEYS["min_noise_floor"].default  # nobody sets it: the default
    assert config.noise_repeats == cfg.PRESETS["smoke"]["noise_repeats"]  # the preset beats the default
    assert config.budget_s == 7.0                  # the TOML beats the preset (an int is a fine float)
    assert config.seed == 7                        # the TOML beats the default
    assert config.evals == 9                       # the flag beats the TOML
    assert config.out == str(tmp_path / "o")


def test_a_preset_flag_overrides_the_preset_named_in_the_toml_file():
    config = cfg.resolve({"preset": "smoke", "evals": 3}, {"preset": "gpu-5min"})
    assert config.preset == "gpu-5min"
    assert config.budget_s == 300.0
    assert config.evals == 3  # the file's own value still beats the (new) preset


def test_flags_left_out_do_not_override_the_toml_file(tmp_path):
    args = build_parser().parse_args(["run"])
    config = cfg.resolve({"evals": 4, "budget_s": 2.5}, cfg.flag_values(args))
    assert (config.evals, config.budget_s) == (4, 2.5)


def test_a_resolved_config_round_trips_through_the_run_toml_it_writes(tmp_path):
    config = cfg.resolve({"data": 'text:/tmp/a "b"/*.txt', "genomes": ["x.py", "y.py"]},
                         {"preset": "smoke", "seed": 3})
    (tmp_path / "run.toml").write_text(config.to_toml())
    again = cfg.resolve(cfg.read_toml(tmp_path / "run.toml"))
    assert again == config


def test_a_run_journaled_before_the_gp_operator_resumes_with_the_shares_it_had():
    saved = cfg.resolve().to_dict()
    assert saved["gp_share"] == 1.0 and cfg.RunConfig.from_dict(saved) == cfg.resolve()
    old = {k: v for k, v in saved.items() if k != "gp_share"} | {"tpe_share": 0.5, "crossover_rate": 0.2}
    again = cfg.RunConfig.from_dict(old)
    assert (again.gp_share, again.tpe_share, again.crossover_rate) == (0.0, 0.5, 0.2)


def test_shares_over_one_are_refused_naming_each_share():
    with pytest.raises(UserError, match=r"add up to 1.5 > 1 \(gp_share = 1.0, tpe_share = 0.5"):
        cfg.resolve({}, {"tpe_share": 0.5})
    assert cfg.resolve({}, {"gp_share": 0.5, "tpe_share": 0.5}).tpe_share == 0.5


# ---------------------------------------------------------------- schema and the documented example
def test_every_key_has_a_section_and_a_comment_and_every_flag_sets_its_key():
    assert {f.name for f in dataclasses.fields(cfg.RunConfig)} - {"llm"} == set(cfg.KEYS)
    samples = {str: "x", int: "3", float: "2.5", tuple: "a.py"}
    for key in cfg.SCHEMA:
        assert key.comment.strip(), f"{key.name} has no comment"
        assert key.section in cfg.SECTIONS
        if not key.flag:
            continue
        argv = ["run", key.flag] if key.type is bool else ["run", key.flag, samples[key.type]]
        given = cfg.flag_values(build_parser().parse_args(argv))
        expected = {bool: True, tuple: ["a.py"]}.get(key.type) or key.type(samples[key.type])
        assert given[key.name] == expected, key.name
        assert [k for k, v in given.items() if v is not None] == [key.name], "a flag set another key"


def test_resolving_nothing_with_the_default_preset_gives_preset_values_over_schema_defaults():
    config = cfg.resolve()
    for name, value in cfg.PRESETS["cpu-demo"].items():
        assert getattr(config, name) == value


KEY_LINE = re.compile(r"^#?\s*([a-z_]+)\s*=\s*(.*?)(?:\s+#\s.*)?$")


def _documented_keys(text: str) -> dict[str, tuple[str, object]]:
    """{key: (section, value)} for every `key = value` line of the example, commented out or not."""
    found, section = {}, None
    for line in text.splitlines():
        header = re.match(r"^\[([a-z]+)\]\s*$", line)
        if header:
            section = header.group(1)
            continue
        m = KEY_LINE.match(line)
        if m and section and m.group(1) in cfg.KEYS:
            found[m.group(1)] = (section, tomllib.loads(f"v = {m.group(2)}")["v"])
    return found


@functools.lru_cache(maxsize=1)
def _evo_config_output() -> str:
    return subprocess.run([sys.executable, "-m", "evo.cli", "config"], capture_output=True, text=True, check=True,
                          cwd=REPO).stdout


def _example_texts():
    yield "evo config", _evo_config_output()
    if EXAMPLE.exists():
        yield str(EXAMPLE.relative_to(REPO)), EXAMPLE.read_text()


def test_the_documented_example_parses_and_lists_every_key_with_its_default_in_its_section():
    texts = list(_example_texts())
    for name, text in texts:
        tomllib.loads(text)  # valid TOML as shipped
        documented = _documented_keys(text)
        assert set(documented) == set(cfg.KEYS), f"{name} misses {set(cfg.KEYS) - set(documented)}"
        for key in cfg.SCHEMA:
            section, value = documented[key.name]
            assert section == key.section, f"{name}: {key.name} is under [{section}]"
            expected = list(key.default) if isinstance(key.default, tuple) else key.default
            assert value == expected, f"{name}: {key.name} = {value!r}, default is {key.default!r}"


def test_examples_run_toml_is_exactly_what_evo_config_prints():
    if not EXAMPLE.exists():
        pytest.skip("examples/run.toml is not generated yet")
    texts = dict(_example_texts())
    assert texts[str(EXAMPLE.relative_to(REPO))] == texts["evo config"], \
        "examples/run.toml drifted: regenerate it with `evo config > examples/run.toml`"


def test_the_example_is_accepted_by_evo_run_and_uncommented_it_gives_the_defaults(tmp_path):
    _, text = next(_example_texts())
    as_shipped = tmp_path / "shipped.toml"
    as_shipped.write_text(text)
    cfg.read_toml(as_shipped)  # no error
    uncommented = tmp_path / "uncommented.toml"
    uncommented.write_text("\n".join(line[2:] if KEY_LINE.match(line) and line.startswith("# ") and
                                     line[2:].split(" ", 1)[0] in cfg.KEYS else line for line in text.splitlines()))
    values = cfg.read_toml(uncommented)
    assert set(values) == set(cfg.KEYS)
    assert cfg.resolve(values) == cfg.RunConfig()


# ---------------------------------------------------------------- named errors, no traceback, nothing written
# (name: (file text, fragments the message must contain)); the first three also run as real subprocesses
BAD_CONFIGS = {
    "unknown key": ('[run]\nevalz = 3\n', ["run.evalz", "allowed keys in [run]", "evals"]),
    "wrong type": ('[slots]\nbudget_s = "fast"\n', ["slots.budget_s", "float"]),
    "impossible value": ('[slots]\nsandbox = "docker"\n', ["slots.sandbox", "auto, bwrap, netns, none"]),
    "key in the wrong section": ('[run]\nbudget_s = 3.0\n', ["run.budget_s"]),
    "unknown section": ('[bogus]\nx = 1\n', ["[bogus]", "run, slots, cluster, search, fitness"]),
    "bool for an int": ('[run]\nevals = true\n', ["run.evals", "int"]),
    "list of non-strings": ('[run]\ngenomes = [1, 2]\n', ["run.genomes", "list of strings"]),
    "unknown preset": ('[run]\npreset = "huge"\n', ["preset", "cpu-demo, smoke, gpu-5min"]),
    "population too small": ('[search]\npopulation_size = 1\n', ["search.population_size", ">= 2"]),
    "budget below the minimum": ('[slots]\nbudget_s = 0.0\n', ["slots.budget_s", ">= 0.5"]),
    "negative count": ('[run]\nevals = -1\n', ["run.evals", ">= 0"]),
    "not a device": ('[slots]\ndevice = "tpu"\n', ["slots.device", "cpu", "cuda"]),
    "not TOML": ('[run\nevals = 3\n', ["not valid TOML"]),
}
SUBPROCESS_CASES = ["unknown key", "wrong type", "impossible value"]


def _case_dir(root: Path, name: str, text: str) -> Path:
    case = root / name.replace(" ", "_")
    case.mkdir()
    (case / "bad.toml").write_text(text)
    return case


def _assert_refused(name: str, case: Path, rc: int, out: str, err: str, data_dir: Path) -> None:
    assert rc == 2, (out, err)
    assert err.startswith("error: "), err
    for fragment in BAD_CONFIGS[name][1]:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    assert "Traceback" not in err and "Traceback" not in out
    assert not (case / "DIR").exists(), "a run directory was created for a bad config"
    assert sorted(p.name for p in case.iterdir()) == ["bad.toml"], "something was written next to the config"
    assert not data_dir.exists(), "a dataset was prepared for a bad config"


@pytest.fixture(scope="module")
def bad_config_runs(tmp_path_factory):
    """`evo run --config bad.toml --out DIR` as subprocesses, started together (each imports torch)."""
    root = tmp_path_factory.mktemp("bad-configs")
    data_dir = root / "evo-data"
    env = {**os.environ, "EVO_DATA_DIR": str(data_dir)}
    procs = {}
    for name in SUBPROCESS_CASES:
        case = _case_dir(root, name, BAD_CONFIGS[name][0])
        procs[name] = (case, subprocess.Popen(
            [sys.executable, "-m", "evo.cli", "run", "--config", str(case / "bad.toml"), "--out", str(case / "DIR")],
            cwd=case, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = {}
    for name, (case, proc) in procs.items():
        out, err = proc.communicate(timeout=300)
        results[name] = (case, proc.returncode, out, err)
    return results, data_dir


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_evo_run_with_a_bad_config_file_exits_2_naming_the_key_and_writes_nothing(bad_config_runs, name):
    results, data_dir = bad_config_runs
    _assert_refused(name, *results[name], data_dir)


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_every_kind_of_bad_config_is_a_named_error_through_the_cli_entry_point(tmp_path, monkeypatch, capsys, name):
    case = _case_dir(tmp_path, name, BAD_CONFIGS[name][0])
    data_dir = tmp_path / "evo-data"
    monkeypatch.setenv("EVO_DATA_DIR", str(data_dir))
    monkeypatch.chdir(case)
    rc = main(["run", "--config", str(case / "bad.toml"), "--out", str(case / "DIR")])
    captured = capsys.readouterr()
    _assert_refused(name, case, rc, captured.out, captured.err, data_dir)


def test_a_bad_flag_value_is_refused_like_a_bad_file_value(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EVO_DATA_DIR", str(tmp_path / "evo-data"))
    rc = main(["run", "--budget", "0.1", "--out", str(tmp_path / "DIR")])
    err = capsys.readouterr().err
    assert rc == 2 and "slots.budget_s" in err and ">= 0.5" in err
    assert not (tmp_path / "DIR").exists()


def test_a_missing_config_file_is_a_named_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        cfg.read_toml(tmp_path / "nope.toml")


def test_evo_run_finds_its_shipped_seed_genome_from_any_directory(tmp_path, monkeypatch):
    from evo.commands import find_genome

    monkeypatch.chdir(tmp_path)  # nothing named genomes/ here
    found = find_genome("genomes/tiny_cpu.py")
    assert found.is_file() and found.name == "tiny_cpu.py" and found.is_absolute()
    with pytest.raises(UserError, match="does not exist"):
        find_genome("genomes/no_such_genome.py")
