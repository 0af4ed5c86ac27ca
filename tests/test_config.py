from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from macasr import config as config_module
from macasr.cli import app
from macasr.config import Config
from macasr.errors import ConfigError

PRESETS = sorted(Path(__file__).parents[1].joinpath("configs").glob("*.toml"))


def test_init_load_dump_load_is_identical(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["config", "init", str(tmp_path / "a.toml")])
    assert result.exit_code == 0, result.output
    first = config_module.load(tmp_path / "a.toml")
    assert first == Config()
    config_module.dump(first, tmp_path / "b.toml")
    assert config_module.load(tmp_path / "b.toml") == first


def test_init_writes_every_field_with_its_help(tmp_path: Path) -> None:
    text = config_module.dumps(Config())
    assert "# Peak learning rate (AdamW)." in text
    for section in ("[model.encoder]", "[model.connector]", "[model.llm]", "[prompt]", "[data]", "[train]", "[eval]", "[logging]"):
        assert section in text


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_shipped_config_validates_and_round_trips(preset: Path, tmp_path: Path) -> None:
    cfg = config_module.load(preset)
    assert config_module.load(config_module.dump(cfg, tmp_path / "x.toml")) == cfg
    assert config_module.load_preset(preset.stem) == cfg


def test_presets_include_demo_and_the_real_recipe() -> None:
    assert {"demo", "whisper-large-v3_qwen3-1.7b"} <= set(config_module.preset_names())
    real = config_module.load_preset("whisper-large-v3_qwen3-1.7b")
    assert (real.model.encoder.path, real.model.llm.path) == ("openai/whisper-large-v3", "Qwen/Qwen3-1.7B")
    assert real.model.connector.downsample == 5 and not real.model.encoder.train and not real.model.llm.train


def test_unknown_key_suggests_the_closest_name() -> None:
    with pytest.raises(ConfigError) as e:
        config_module.loads("[train]\nwarmup_stepz = 10\n", "cfg.toml")
    assert str(e.value) == "cfg.toml:2: unknown key `warmup_stepz` in [train]; did you mean `warmup_steps`?"


def test_every_problem_is_reported_at_once() -> None:
    text = "[train]\nlr = \"fast\"\nmax_steps = 10\nwarmup_steps = 50\n\n[data]\nbatch_sise = 3\n\n[model.connector]\nname = \"mlpp\"\n"
    with pytest.raises(ConfigError) as e:
        config_module.loads(text, "cfg.toml")
    problems = e.value.problems
    assert len(problems) == 3, problems
    assert any("cfg.toml:2: `train.lr`: expected a number, got 'fast' (str)" in p for p in problems)
    assert any("did you mean `batch_size`" in p for p in problems)
    assert any("unknown connector 'mlpp'; choose one of: linear, mlp" in p for p in problems)


def test_cross_field_rule_is_checked() -> None:
    with pytest.raises(ConfigError, match="warmup_steps: must be between 0 and max_steps"):
        config_module.loads("[train]\nmax_steps = 10\nwarmup_steps = 50\n")


def test_toml_syntax_error_names_file_and_line() -> None:
    with pytest.raises(ConfigError, match=r"cfg.toml: TOML syntax error: .*line 2"):
        config_module.loads("[train]\nlr = = 1\n", "cfg.toml")


def test_component_table_is_validated_against_its_own_config() -> None:
    cfg = config_module.loads('[model.connector]\nname = "linear"\ndownsample = 3\n')
    assert cfg.model.connector.name == "linear" and cfg.model.connector.downsample == 3
    with pytest.raises(ConfigError, match="unknown key `hidden_dim` in \\[model.connector\\]"):
        config_module.loads('[model.connector]\nname = "linear"\nhidden_dim = 3\n')


def test_cli_reports_a_bad_config_in_one_line_per_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nwarmup_stepz = 1\nlr = true\n")
    result = CliRunner().invoke(app, ["train", str(bad)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 2, result.output
    assert all(line.startswith("error: ") and str(bad) in line for line in lines)
    assert "Traceback" not in result.output


def test_cli_init_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "c.toml"
    target.write_text("")
    result = CliRunner().invoke(app, ["config", "init", str(target)])
    assert result.exit_code == 1 and "--force" in result.output
