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
    assert "# Peak learning rate (AdamW; with optimizer = \"muon\", of the parameters Muon does not update)." in text
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
    assert len(problems) == 4, problems  # the value rule of [train] runs beside its type error
    assert "cfg.toml:4: [train] warmup_steps: must be between 0 and max_steps (10), got 50" in problems
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


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[train]\nlr = 1e-4\nseed = 1\nlr = 2e-4\n", "cfg.toml:4: duplicate key `train.lr` (first set on line 2)"),
        ('[eval.datasets]\ntest = "a.jsonl"\n"test" = "b.jsonl"\n', "cfg.toml:3: duplicate key `eval.datasets.test` (first set on line 2)"),
        ("[train]\nlr = 1e-4\n\n[data]\nbatch_size = 2\n[train]\nseed = 1\n", "cfg.toml:6: duplicate table `[train]` (first set on line 1)"),
        ("train.lr = 1e-4\ntrain.lr = 2e-4\n", "cfg.toml:2: duplicate key `train.lr` (first set on line 1)"),
    ],
    ids=["key", "quoted-key", "table", "dotted-key"],
)
def test_a_duplicate_key_is_named_with_both_lines(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        config_module.loads(text, "cfg.toml")
    assert len(e.value.problems) == 1 and e.value.problems[0].startswith(expected + ";"), e.value.problems


def test_value_rules_still_run_when_the_same_table_has_a_type_error() -> None:
    text = '[train]\nlr = "fast"\ngrad_accum = 0\nmax_steps = "many"\nwarmup_steps = 50000\n\n[data]\nmax_duration = "x"\nmax_batch_seconds = -1\n'
    with pytest.raises(ConfigError) as e:
        config_module.loads(text, "cfg.toml")
    assert e.value.problems == [
        "cfg.toml:2: `train.lr`: expected a number, got 'fast' (str)",
        "cfg.toml:3: [train] grad_accum: must be at least 1, got 0",  # a value rule beside the type errors
        "cfg.toml:4: `train.max_steps`: expected an integer, got 'many' (str)",
        # warmup_steps vs max_steps is not judged: max_steps is broken, its default would mislead
        "cfg.toml:8: `data.max_duration`: expected a number, got 'x' (str)",
        "cfg.toml:9: [data] max_batch_seconds: must be 0 (off) or positive, got -1.0",
    ]


def test_a_rule_between_tables_is_checked_beside_a_type_error_below_it() -> None:
    text = "[model.llm]\ntrain = true\n\n[model.llm.lora]\nenabled = true\nr = \"x\"\n"
    with pytest.raises(ConfigError) as e:
        config_module.loads(text, "cfg.toml")
    assert len(e.value.problems) == 2
    assert e.value.problems[0].startswith("cfg.toml:2: [model.llm] train: LoRA ([model.llm.lora] enabled) and full fine-tuning")
    assert "cfg.toml:6: `model.llm.lora.r`: expected an integer" in e.value.problems[1]


@pytest.mark.parametrize("lr", ["1e38", "2.0", "nan", "inf", "0.0"])
def test_a_learning_rate_no_step_survives_is_refused_at_load(lr: str) -> None:
    """1e38 passed the old "positive" rule, then overflowed float32 inside AdamW with a traceback."""
    with pytest.raises(ConfigError, match=r"cfg.toml:2: \[train\] lr: must be positive and at most 1"):
        config_module.loads(f"[train]\nlr = {lr}\n", "cfg.toml")


@pytest.mark.parametrize("device", ["gpu", "cuda0", "CUDA", "cuda:", "cuda:one", ""])
def test_a_misspelt_device_is_refused_at_load(device: str) -> None:
    with pytest.raises(ConfigError) as e:
        config_module.loads(f'[train]\nseed = 1\ndevice = "{device}"\n', "cfg.toml")
    assert e.value.problems == [
        f"cfg.toml:3: [train] device: expected {config_module.DEVICE_CHOICES}, got {device!r}"
        + ("; a GPU is cuda (NVIDIA or AMD), mps (Apple) or xpu (Intel)" if device == "gpu" else "")
    ]


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:3", "mps", "xpu", "xpu:1"])
def test_device_names_load_without_the_device(device: str) -> None:
    # A config written on a laptop for a GPU machine must load there; presence is checked when resolved.
    assert config_module.loads(f'[train]\ndevice = "{device}"\n').train.device == device


def _config_naming_files(tmp_path: Path) -> Path:
    (tmp_path / "train.jsonl").write_text("")
    (tmp_path / "llm").mkdir()
    (tmp_path / "not-a-model.bin").write_text("")
    cfg = config_module.replace(Config(), **{
        "data.train": [str(tmp_path / "train.jsonl"), str(tmp_path / "missing-train.jsonl")],
        "data.valid": [str(tmp_path)],
        "datasets": {"test": config_module.DatasetConfig(manifest=[str(tmp_path / "missing-test.jsonl")])},
        "model.encoder.path": str(tmp_path / "no-such-encoder"),
        "model.llm.path": str(tmp_path / "llm"),
    })
    return config_module.dump(cfg, tmp_path / "c.toml")


def test_config_check_reports_missing_files_and_schema_problems_in_one_run(tmp_path: Path) -> None:
    path = _config_naming_files(tmp_path)
    path.write_text(path.read_text().replace("seed = 0", 'seed = "zero"'))
    result = CliRunner().invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 1
    expected = [
        (_line(path, "seed ="), "`train.seed`: expected an integer, got 'zero' (str)"),
        (_line(path, "train = ["), f"[data] train: no such manifest {str(tmp_path / 'missing-train.jsonl')!r}"),
        (_line(path, "valid = ["), f"[data] valid: {str(tmp_path)!r} is a folder without Shar shards "
                                   "(cuts.000000.jsonl.gz ...); expected a manifest file or a Shar folder"),
        (_line(path, "manifest = ["), f"[datasets.test] manifest: no such manifest {str(tmp_path / 'missing-test.jsonl')!r}"),
        (_line(path, "path = "), f"[model.encoder] path: no such model folder {str(tmp_path / 'no-such-encoder')!r}"),
    ]
    assert result.stderr.splitlines() == [f"error: {path}:{line}: {message}" for line, message in sorted(expected)]


def _line(path: Path, start: str) -> int:
    """The first line of `path` that starts with `start`."""
    return next(n for n, line in enumerate(path.read_text().splitlines(), start=1) if line.startswith(start))


def test_loading_a_config_does_not_require_its_files(tmp_path: Path) -> None:
    # train needs no test sets and eval no training manifests: only `config check` looks.
    assert config_module.load(_config_naming_files(tmp_path)).data.valid == [str(tmp_path)]


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("Qwen/Qwen3-1.7B", None), ("gpt2", None),
        ("./models/qwen", "no such model folder './models/qwen'"), ("runs/no-such-run/models/qwen3", "no such model folder"),
        ("../qwen", "no such model folder"), ("/nonexistent/qwen", "no such model folder '/nonexistent/qwen'"),
    ],
)
def test_config_check_tells_hub_ids_from_missing_local_folders(path: str, problem: str | None, tmp_path: Path) -> None:
    cfg = config_module.dump(config_module.replace(Config(), **{"model.llm.path": path, "model.encoder.path": "openai/whisper-tiny"}), tmp_path / "c.toml")
    result = CliRunner().invoke(app, ["config", "check", str(cfg)])
    if problem is None:
        assert result.exit_code == 0, result.output
        lines = cfg.read_text().splitlines()
        llm_path = next(n for n in range(lines.index("[model.llm]"), len(lines)) if lines[n].startswith("path = ")) + 1
        assert f"note: {cfg}:{llm_path}: [model.llm] path: {path!r} is not a local folder" in result.stderr
        assert "Hugging Face hub id" in result.stderr
    else:
        assert result.exit_code == 1
        assert f"[model.llm] path: {problem}" in result.stderr


def test_a_feature_cache_refuses_what_would_change_cached_frames() -> None:
    text = ('[data]\ncache = "cache/"\nspec_augment = true\n\n[augment]\nspeed_prob = 0.5\n\n'
            '[model.encoder]\nname = "whisper"\ntrain = true\n')
    with pytest.raises(ConfigError) as e:
        config_module.loads(text, "c.toml")
    lines = str(e.value).splitlines()
    assert len(lines) == 3 and all(line.startswith("c.toml:2: [data] cache: ") for line in lines)
    assert "waveform augmentation" in lines[0] and "spec_augment" in lines[1] and "encoder trains" in lines[2]
    assert config_module.loads('[data]\ncache = "cache/"\n').data.cache == "cache/"  # alone it is fine


def test_config_check_looks_for_init_from_relative_to_the_current_folder(tmp_path: Path, monkeypatch) -> None:
    """Like manifests and model folders, a relative [train] init_from is read from the current folder."""
    cfg = config_module.dump(config_module.replace(Config(), **{"model.llm.path": "gpt2", "model.encoder.path": "openai/whisper-tiny",
                                                                 "train.init_from": "runs/a/best.pt"}), tmp_path / "c.toml")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["config", "check", str(cfg)])
    assert result.exit_code == 1
    assert [x for x in result.stderr.splitlines() if x.startswith("error:")] == [
        f"error: {cfg}:{_line(cfg, 'init_from =')}: [train] init_from: no such checkpoint "
                                          f"file or bundle folder {str(tmp_path / 'runs/a/best.pt')!r}"]
    (tmp_path / "runs" / "a").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "best.pt").write_bytes(b"PK")
    assert CliRunner().invoke(app, ["config", "check", str(cfg)]).exit_code == 0
    result = CliRunner().invoke(app, ["config", "check", str(cfg), "--set", "train.init_from=/nonexistent/best.pt"])
    assert result.exit_code == 1 and "[train] init_from: no such checkpoint file or bundle folder '/nonexistent/best.pt'" in result.stderr
