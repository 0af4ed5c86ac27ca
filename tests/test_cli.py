"""The CLI as users run it: help everywhere, one clear line per bad input, exit status 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from conftest import noise
from macasr import config as config_module
from macasr.cli import app
from macasr.model.build import build_model
from macasr.train import checkpoint

runner = CliRunner()

COMMANDS = [[], ["train"], ["eval"], ["transcribe"], ["demo"], ["plan"], ["config"], ["config", "init"], ["config", "check"]]


@pytest.fixture(scope="module")
def ckpt(tiny_config, tmp_path_factory) -> Path:
    model = build_model(tiny_config)
    return checkpoint.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", checkpoint.model_payload(model, tiny_config))


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "macasr")
def test_every_command_has_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("macasr 0.")


def test_transcribe_reports_each_bad_file_and_keeps_going(ckpt: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.wav"
    sf.write(good, noise(1.0), 16_000)
    empty = tmp_path / "empty.wav"
    sf.write(empty, noise(0.0), 16_000)
    garbage = tmp_path / "garbage.flac"
    garbage.write_bytes(b"this is not audio at all" * 20)
    missing = tmp_path / "missing.wav"
    result = runner.invoke(app, ["transcribe", str(good), str(missing), str(empty), str(garbage), "--ckpt", str(ckpt), "--format", "json"])
    assert result.exit_code == 1
    objects = [json.loads(line) for line in result.stdout.splitlines()]  # one per input, failed ones with "error"
    assert [o["audio"] for o in objects] == [str(good), str(missing), str(empty), str(garbage)]
    assert ["error" in o for o in objects] == [False, True, True, True]
    errors = result.stderr.splitlines()
    assert len(errors) == 3, result.stderr
    for path, reason in ((missing, "no such audio file"), (empty, "empty"), (garbage, "cannot")):
        assert any(str(path) in line and reason in line for line in errors), (path, errors)


def test_transcribe_txt_prints_only_the_transcript_for_one_file(ckpt: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.wav"
    sf.write(good, noise(1.0), 16_000)
    result = runner.invoke(app, ["transcribe", str(good), "--ckpt", str(ckpt)])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) <= 1 and str(good) not in result.stdout


@pytest.mark.parametrize("kind", ["missing", "foreign"])
def test_a_bad_checkpoint_is_one_line(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    if kind == "foreign":
        torch.save({"weights": torch.zeros(2)}, path)
    audio = tmp_path / "a.wav"
    sf.write(audio, noise(0.5), 16_000)
    result = runner.invoke(app, ["transcribe", str(audio), "--ckpt", str(path)])
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and str(path) in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_a_bad_manifest_line_is_named(ckpt: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"audio": "a.wav", "text": "hi", "duration": 1.0}\n{"audio": "b.wav", "text": "x"}\n')
    result = runner.invoke(app, ["eval", "--ckpt", str(ckpt), "--manifest", str(manifest)])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {manifest}:2: missing key `duration` (expected audio, text, duration)"


def test_eval_needs_something_to_score(ckpt: Path) -> None:
    result = runner.invoke(app, ["eval", "--ckpt", str(ckpt)])
    assert result.exit_code == 1 and "--manifest" in result.stderr


def test_debug_mode_shows_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from macasr.errors import ConfigError

    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlr = -1\n")
    monkeypatch.setenv("MACASR_DEBUG", "1")
    result = runner.invoke(app, ["config", "check", str(bad)])
    assert result.exit_code == 1 and isinstance(result.exception, ConfigError)
    monkeypatch.delenv("MACASR_DEBUG")
    result = runner.invoke(app, ["config", "check", str(bad)])
    errors = [line for line in result.stderr.splitlines() if not line.startswith("note: ")]  # notes: the default hub ids
    assert result.exit_code == 1 and errors == [f"error: {bad}:2: [train] lr: must be positive and at most 1 (a larger AdamW step overflows float32 at once), got -1.0"]


def test_python_dash_m_macasr_runs_the_cli() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "macasr", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("macasr ")


def test_a_missing_model_folder_is_one_line(tiny_config, tmp_path: Path) -> None:
    cfg = config_module.replace(tiny_config, **{"model.llm.path": str(tmp_path / "no-such-model"), "data.train": [str(tmp_path / "t.jsonl")]})
    (tmp_path / "t.jsonl").write_text('{"audio": "a.wav", "text": "x", "duration": 1}\n')
    result = runner.invoke(app, ["train", str(config_module.dump(cfg, tmp_path / "c.toml"))])
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: [model.llm] path: cannot load") and "no-such-model" in lines[0]
