"""`--set KEY=VALUE`: config keys from the command line, validated like the file, on every command
that takes a config, and on the stored config of a checkpoint (a moved model folder)."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest
import soundfile as sf
from typer.testing import CliRunner

from conftest import noise
from macasr import config as config_module, config_overrides
from macasr.cli import app
from macasr.errors import ConfigError, MacasrError
from macasr.model.connector_config import QFormerConnectorConfig

runner = CliRunner()

# Every command that reads a config (a file, a preset or a checkpoint's stored one).
CONFIG_COMMANDS = [["train"], ["plan"], ["eval"], ["transcribe"], ["export"], ["config", "check"], ["config", "init"],
                   ["cache", "build"], ["data", "stats"]]


@pytest.mark.parametrize(("raw", "expected"), [
    ("3e-4", 3e-4), ("7", 7), ("true", True), ('["a", "b"]', ["a", "b"]), ('"text"', "text"), ("'x y'", "x y"),
    ("{ manifest = \"t.jsonl\" }", {"manifest": "t.jsonl"}), ("qformer", "qformer"), ("/models/llm", "/models/llm"),
    ("Qwen/Qwen3-0.6B", "Qwen/Qwen3-0.6B"), ("2024-01-01", "2024-01-01"), ("", ""),
])
def test_a_value_is_read_as_toml_and_a_bare_word_as_a_string(raw: str, expected: object) -> None:
    value = config_overrides.parse_override(f"train.name={raw}").value
    assert value == expected and type(value) is type(expected)


def test_a_value_that_starts_like_toml_but_is_not_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^--set data.train=\[a, b: '\[a, b' is not a TOML value"):
        config_overrides.parse_override("data.train=[a, b")


@pytest.fixture
def toml(tmp_path: Path) -> Path:
    path = tmp_path / "c.toml"
    path.write_text('[model.connector]\nname = "mlp"\nhidden_dim = 64\ndownsample = 3\n\n[train]\nlr = 1e-4\n')
    return path


def test_overrides_are_set_into_the_file_and_the_last_one_wins(toml: Path) -> None:
    cfg = config_overrides.load(toml, ["train.lr=3e-4", "train.seed=7", "train.seed=8", "data.train=[\"a.jsonl\", \"b.jsonl\"]",
                                       "datasets.dev.manifest=dev.jsonl", "eval.test_sets=[\"dev\"]"])
    assert (cfg.train.lr, cfg.train.seed, cfg.data.train) == (3e-4, 8, ["a.jsonl", "b.jsonl"])
    assert cfg.datasets["dev"].manifest == ["dev.jsonl"] and cfg.eval.test_sets == ["dev"]
    assert cfg.model.connector.hidden_dim == 64  # untouched keys as the file has them
    assert config_overrides.load(toml, []) == config_module.load(toml)


def test_switching_a_component_drops_the_old_ones_keys(toml: Path) -> None:
    cfg = config_overrides.load(toml, ["model.connector.name=qformer", "model.connector.num_queries=3"])
    assert isinstance(cfg.model.connector, QFormerConnectorConfig)  # the file's mlp-only hidden_dim is dropped
    assert (cfg.model.connector.num_queries, cfg.model.connector.downsample) == (3, 3)  # a key both have is kept


@pytest.mark.parametrize(("flag", "message"), [
    ("train.lr=abc", "`train.lr`: expected a number, got 'abc' (str)"),
    ("train.lr=-1", "[train] lr: must be positive and at most 1 (a larger AdamW step overflows float32 at once), got -1.0"),
    ("train.lrr=3e-4", "unknown key `lrr` in [train]; did you mean `lr`?"),
    ("trian.lr=3e-4", "unknown key `trian` in the top level; did you mean `train`?"),
    ("model.connector.name=qfromer", "`model.connector.name`: unknown connector 'qfromer'; choose one of: linear, mlp, qformer, transformer"),
    ("train.lr.x=1", "`train.lr` is a value (0.0001), not a table"),
    ("train.lr", "expected KEY=VALUE with a dotted KEY, e.g. --set train.lr=3e-4"),
])
def test_a_bad_override_is_one_line_naming_the_flag(toml: Path, flag: str, message: str) -> None:
    result = runner.invoke(app, ["config", "check", str(toml), "--set", flag])
    errors = [line for line in result.stderr.splitlines() if not line.startswith("note: ")]  # notes: the default hub ids
    assert result.exit_code == 1 and errors == [f"error: --set {flag}: {message}"], result.output


def test_the_files_own_problems_keep_their_lines_beside_the_flags(toml: Path) -> None:
    toml.write_text(toml.read_text() + "warmup_steps = -1\n")
    with pytest.raises(ConfigError) as e:
        config_overrides.load(toml, ["train.seed=x"])
    assert e.value.problems == [f"{toml}:8: [train] warmup_steps: must be between 0 and max_steps (20000), got -1",
                                "--set train.seed=x: `train.seed`: expected an integer, got 'x' (str)"]
    assert isinstance(e.value, config_overrides.OverrideError)  # a flag caused one of them
    assert config_overrides.load(toml, ["train.warmup_steps=0"]).train.warmup_steps == 0  # a flag can mend the file


@pytest.mark.parametrize("command", CONFIG_COMMANDS, ids=" ".join)
def test_every_command_that_takes_a_config_has_set(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "--set KEY=VALUE" in result.output


def test_plan_and_cache_build_validate_the_flags(toml: Path) -> None:
    for command in (["plan", str(toml)], ["cache", "build", str(toml)], ["train", str(toml)]):
        result = runner.invoke(app, [*command, "--set", "train.lr=abc"])
        assert result.exit_code == 1 and result.stderr.splitlines() == [
            "error: --set train.lr=abc: `train.lr`: expected a number, got 'abc' (str)"], (command, result.output)


def test_config_init_writes_the_overridden_config(tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "init", str(tmp_path / "c.toml"), "--set", "model.connector.name=linear", "--set", "train.lr=2e-4"])
    assert result.exit_code == 0, result.output
    cfg = config_module.load(tmp_path / "c.toml")
    assert cfg.model.connector.name == "linear" and cfg.train.lr == 2e-4


def test_train_stores_the_overridden_config(tiny_config, corpus, tmp_path: Path) -> None:
    cfg = config_module.replace(tiny_config, **{"data.train": [str(corpus["train"])], "train.output_dir": str(tmp_path),
                                                "train.name": "run", "train.warmup_steps": 0, "train.max_steps": 1})
    path = config_module.dump(cfg, tmp_path / "c.toml")
    result = runner.invoke(app, ["train", str(path), "--set", "train.lr=3e-4", "--set", "train.seed=11", "--set", "train.name=other"])
    assert result.exit_code == 0, result.output
    stored = tomllib.loads((tmp_path / "other" / "config.toml").read_text())
    assert (stored["train"]["lr"], stored["train"]["seed"]) == (3e-4, 11)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- a checkpoint whose LLM folder moved


@pytest.fixture(scope="module")
def moved(tiny_config, tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, the LLM's new folder): the checkpoint names a folder that was renamed since."""
    from macasr.model.build import build_model
    from macasr.train import checkpoint

    root = tmp_path_factory.mktemp("moved")
    shutil.copytree(tiny_config.model.llm.path, root / "llm")
    cfg = config_module.replace(tiny_config, **{"model.llm.path": str(root / "llm")})
    ckpt = checkpoint.save_checkpoint(root / "best.pt", checkpoint.model_payload(build_model(cfg), cfg))
    (root / "llm").rename(root / "llm-renamed")
    return ckpt, root / "llm-renamed"


def test_transcribe_with_a_moved_llm_folder_is_remapped_with_set(moved: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, new = moved
    audio = tmp_path / "a.wav"
    sf.write(audio, noise(1.0), 16_000)
    result = runner.invoke(app, ["transcribe", str(audio), "--ckpt", str(ckpt)])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"error: {ckpt}: its stored config's [model.llm] path: cannot load '{new.parent / 'llm'}': the folder does not "
        "exist; if the model moved, give its folder with --set model.llm.path=FOLDER"]
    result = runner.invoke(app, ["transcribe", str(audio), "--ckpt", str(ckpt), "--set", f"model.llm.path={new}"])
    assert result.exit_code == 0, result.output


def test_eval_with_a_moved_llm_folder_is_remapped_with_set(moved: tuple[Path, Path], corpus) -> None:
    ckpt, new = moved
    args = ["eval", "--ckpt", str(ckpt), "--manifest", str(corpus["test"])]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "--set model.llm.path=FOLDER" in result.stderr
    result = runner.invoke(app, [*args, "--set", f"model.llm.path={new}", "--set", "eval.num_beams=2"])
    assert result.exit_code == 0, result.output
    assert "WER" in result.stdout


def test_a_bad_override_of_a_stored_config_names_the_flag_not_the_checkpoint(moved: tuple[Path, Path]) -> None:
    from macasr.train.checkpoint import restore_model

    ckpt, _ = moved
    with pytest.raises(config_overrides.OverrideError) as e:
        restore_model(ckpt, "cpu", overrides=["model.llm.pth=x"])
    assert str(e.value) == "--set model.llm.pth=x: unknown key `pth` in [model.llm]; did you mean `path`?"


def test_export_with_a_moved_llm_folder_is_remapped_with_set(moved: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, new = moved
    result = runner.invoke(app, ["export", str(ckpt), "--out", str(tmp_path / "bundle"), "--set", f"model.llm.path={new}"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "bundle" / "llm").is_dir()
    from macasr.train.checkpoint import restore_model

    assert restore_model(tmp_path / "bundle", "cpu", overrides=["eval.num_beams=3"]).config.eval.num_beams == 3  # a bundle's config too


def test_a_stopped_run_says_to_resume_with_the_same_flags(tiny_config, corpus, tmp_path: Path, monkeypatch) -> None:
    import os
    import signal

    from macasr.model.speech_llm import SpeechLLM

    cfg = config_module.replace(tiny_config, **{"data.train": [str(corpus["train"])], "train.output_dir": str(tmp_path),
                                                "train.name": "run", "train.warmup_steps": 0, "train.max_steps": 50, "train.valid_every": 50})
    forward = SpeechLLM.forward

    def interrupted(self, batch):
        os.kill(os.getpid(), signal.SIGINT)  # during step 1
        return forward(self, batch)

    monkeypatch.setattr(SpeechLLM, "forward", interrupted)
    toml = config_module.dump(cfg, tmp_path / "c.toml")
    result = runner.invoke(app, ["train", str(toml), "--set", "train.lr=3e-4", "--set", "train.name=my run"])
    assert result.exit_code == 130, result.output
    again = f"continue with: macasr train {toml} --resume --set train.lr=3e-4 --set 'train.name=my run'"
    assert again in " ".join(result.output.split())
    assert (tmp_path / "my run" / "last.pt").is_file()


# ---------------------------------------------------------------- which flag caused a problem


def test_a_rule_across_keys_broken_by_a_flag_names_the_flag_not_the_files_line(toml: Path) -> None:
    toml.write_text(toml.read_text() + "warmup_steps = 100\n")
    with pytest.raises(config_overrides.OverrideError) as e:
        config_overrides.load(toml, ["train.max_steps=50"])
    assert e.value.problems == ["--set train.max_steps=50: [train] warmup_steps: must be between 0 and max_steps (50), got 100"]


def test_a_rule_of_another_table_broken_by_a_flag_names_the_flag() -> None:
    stored = {"model": {"llm": {"train": True}}}
    with pytest.raises(config_overrides.OverrideError) as e:
        config_overrides.from_dict(stored, config_overrides.parse_overrides(["model.llm.lora.enabled=true"]), "best.pt (stored config)")
    assert str(e.value).startswith("--set model.llm.lora.enabled=true: [model.llm] train: LoRA ([model.llm.lora] enabled) and full")


# ---------------------------------------------------------------- --set on a checkpoint command


@pytest.mark.parametrize(("command", "flags", "refused"), [
    ("eval", ["train.lr=1e-3", "eval.num_beams=2"], "--set train.lr=1e-3: has no effect on eval"),
    ("transcribe", ["data.train=[\"x\"]", "augment.speed.p=0.5", "datasets.a.manifest=a.jsonl"],
     "--set data.train=[\"x\"], --set augment.speed.p=0.5, --set datasets.a.manifest=a.jsonl: have no effect on transcribe"),
    ("export", ["logging.log_every=3"], "--set logging.log_every=3: has no effect on export"),
    ("inspect", ["eval.num_beams=2"], "--set eval.num_beams=2: has no effect on inspect"),
])
def test_a_checkpoint_command_refuses_keys_it_does_not_use(command: str, flags: list[str], refused: str) -> None:
    with pytest.raises(config_overrides.OverrideError) as e:
        config_overrides.checkpoint_overrides(flags, command)
    assert str(e.value).startswith(refused + " (of a checkpoint's config it reads [model], [prompt], [plugins] and ")


def test_a_checkpoint_command_warns_about_keys_the_model_was_trained_with() -> None:
    flags = ["model.llm.path=/m", "prompt.prefix=Hi", "eval.num_beams=2", "data.on_bad_clip=error", "model.connector.dropout=0.1",
             "plugins.modules=[\"p.py\"]", "train.precision=fp32"]
    assert config_overrides.checkpoint_overrides(flags, "eval") == [
        "--set changes how the model was trained: prompt.prefix, model.connector.dropout"]
    assert config_overrides.checkpoint_overrides(["model.encoder.path=/e", "eval.vad=false"], "transcribe") == []


def test_transcribe_refuses_a_flag_without_effect_before_loading(moved: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, new = moved
    result = runner.invoke(app, ["transcribe", str(tmp_path / "none.wav"), "--ckpt", str(ckpt), "--set", "train.lr=1e-3"])
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("error: --set train.lr=1e-3: has no effect on transcribe")


@pytest.mark.parametrize("command", ["eval", "transcribe"])
def test_an_option_and_a_set_of_the_same_key_are_refused_before_loading(command: str, tmp_path: Path) -> None:
    """--num-beams 3 with --set eval.num_beams=2: which wins is not obvious, so neither is taken."""
    inputs = ["--manifest", str(tmp_path / "none.jsonl")] if command == "eval" else [str(tmp_path / "none.wav")]
    result = runner.invoke(app, [command, *inputs, "--ckpt", str(tmp_path / "missing.pt"), "--num-beams", "3",
                                 "--set", "eval.num_beams=2"])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == ("error: --set eval.num_beams=2: eval.num_beams is also given by an option of this "
                                     "command (3); give one of them")  # before the missing checkpoint is noticed


@pytest.fixture(scope="module")
def eval_reports(moved: tuple[Path, Path], corpus, tmp_path_factory) -> tuple[Path, Path, str]:
    """(report with a changed prompt, report with none, eval's stderr): one checkpoint scored twice."""
    ckpt, new = moved
    folder = tmp_path_factory.mktemp("reports")
    args = ["eval", "--ckpt", str(ckpt), "--manifest", str(corpus["test"]), "--set", f"model.llm.path={new}"]
    changed = runner.invoke(app, [*args, "--set", "prompt.prefix=Hello", "--report", str(folder / "changed.json")])
    assert changed.exit_code == 0, changed.output
    plain = runner.invoke(app, [*args, "--report", str(folder / "plain.json")])
    assert plain.exit_code == 0, plain.output
    return folder / "changed.json", folder / "plain.json", changed.stderr


def test_eval_warns_about_a_changed_prompt_and_records_the_flags_in_its_report(eval_reports, moved) -> None:
    import json

    changed, plain, stderr = eval_reports
    assert "warning: --set changes how the model was trained: prompt.prefix" in stderr.splitlines()
    assert json.loads(changed.read_text())["overrides"] == [f"model.llm.path={moved[1]}", "prompt.prefix=Hello"]
    assert json.loads(plain.read_text())["overrides"] == [f"model.llm.path={moved[1]}"]
    result = runner.invoke(app, ["eval", "--compare", str(changed), str(plain)])  # a reader of reports takes the field
    assert result.exit_code == 0, result.output


def test_export_records_the_flags_in_the_bundle_and_its_card(moved: tuple[Path, Path], tmp_path: Path) -> None:
    import json

    ckpt, new = moved
    result = runner.invoke(app, ["export", str(ckpt), "--out", str(tmp_path / "b"), "--set", f"model.llm.path={new}",
                                 "--set", "prompt.prefix=Hi"])
    assert result.exit_code == 0, result.output
    assert "warning: --set changes how the model was trained: prompt.prefix" in result.stderr.splitlines()
    assert json.loads((tmp_path / "b" / "bundle.json").read_text())["overrides"] == [f"model.llm.path={new}", "prompt.prefix=Hi"]
    card = (tmp_path / "b" / "README.md").read_text()
    assert f"Exported with `--set model.llm.path={new}`, `--set prompt.prefix=Hi`: the bundle's config holds these values" in card
    assert config_module.load(tmp_path / "b" / "config.toml").prompt.prefix == "Hi"


# ---------------------------------------------------------------- a stored config the flags break


def test_weights_that_do_not_fit_a_model_changed_by_set_name_the_flag(moved: tuple[Path, Path]) -> None:
    from macasr.errors import CheckpointError
    from macasr.train.checkpoint import restore_model

    ckpt, new = moved
    with pytest.raises(CheckpointError) as e:
        restore_model(ckpt, "cpu", overrides=[f"model.llm.path={new}", "model.connector.hidden_dim=32"])
    assert str(e.value).endswith("[32, 64] in the model built from its stored config as changed by "
                                 f"--set model.llm.path={new} --set model.connector.hidden_dim=32")
    with pytest.raises(CheckpointError) as e:
        restore_model(ckpt, "cpu", overrides=[f"model.llm.path={new}", "model.llm.lora.enabled=true"])
    assert "weights were saved for a different set of trained parts" in str(e.value)
    assert str(e.value).endswith(f"the model was built from its stored config as changed by --set model.llm.path={new} "
                                 "--set model.llm.lora.enabled=true")


def test_a_stored_config_made_invalid_by_set_names_the_flag(tiny_config, tmp_path: Path) -> None:
    from macasr.model.build import build_model
    from macasr.train import checkpoint

    cfg = config_module.replace(tiny_config, **{"model.llm.train": True})
    ckpt = checkpoint.save_checkpoint(tmp_path / "best.pt", checkpoint.model_payload(build_model(tiny_config), cfg))
    with pytest.raises(config_overrides.OverrideError) as e:
        checkpoint.restore_model(ckpt, "cpu", overrides=["model.llm.lora.enabled=true"])
    assert str(e.value).startswith("--set model.llm.lora.enabled=true: [model.llm] train: LoRA")


def test_a_folder_given_by_set_that_does_not_load_is_named_by_its_flag(moved: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, _ = moved
    result = runner.invoke(app, ["transcribe", str(tmp_path / "a.wav"), "--ckpt", str(ckpt), "--set", f"model.llm.path={tmp_path / 'no'}"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"error: --set model.llm.path={tmp_path / 'no'}: cannot load '{tmp_path / 'no'}': "
                                          "the folder does not exist"]


def test_every_moved_model_folder_is_named_in_one_line(tiny_config, tmp_path: Path) -> None:
    from macasr.model.build import build_model
    from macasr.train import checkpoint

    for part in ("encoder", "llm"):
        shutil.copytree(getattr(tiny_config.model, part).path, tmp_path / part)
    cfg = config_module.replace(tiny_config, **{"model.encoder.path": str(tmp_path / "encoder"), "model.llm.path": str(tmp_path / "llm")})
    ckpt = checkpoint.save_checkpoint(tmp_path / "best.pt", checkpoint.model_payload(build_model(cfg), cfg))
    for part in ("encoder", "llm"):
        (tmp_path / part).rename(tmp_path / f"{part}-moved")
    with pytest.raises(MacasrError) as e:
        checkpoint.restore_model(ckpt, "cpu")
    assert str(e.value) == (
        f"{ckpt}: its stored config's [model.encoder] path: cannot load '{tmp_path / 'encoder'}': the folder does not exist; "
        f"[model.llm] path: cannot load '{tmp_path / 'llm'}': the folder does not exist; if the models moved, give their "
        "folders with --set model.encoder.path=FOLDER --set model.llm.path=FOLDER")
    moved_to = [f"model.encoder.path={tmp_path / 'encoder-moved'}", f"model.llm.path={tmp_path / 'llm-moved'}"]
    assert checkpoint.restore_model(ckpt, "cpu", overrides=moved_to).overrides == moved_to


@pytest.mark.parametrize("command", [["eval"], ["transcribe"], ["export"], ["inspect"]], ids=" ".join)
def test_the_set_help_of_a_checkpoint_command_shows_checkpoint_examples(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    text = " ".join(result.output.split())
    assert "--set model.llm.path=DIR" in text and "checkpoint's stored config" in text and "train.lr" not in text
    example = "--set train.precision=fp32" if command == ["inspect"] else "--set eval.num_beams=4"  # inspect decodes nothing
    assert example in text and ("eval.num_beams" in text) == (command != ["inspect"])


@pytest.mark.parametrize("command", [["train"], ["plan"], ["config", "init"], ["config", "check"], ["data", "stats"], ["cache", "build"]],
                         ids=" ".join)
def test_the_set_help_of_a_config_command_shows_config_examples(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    text = " ".join(result.output.split())
    assert "--set train.lr=3e-4" in text and "stored config" not in text
