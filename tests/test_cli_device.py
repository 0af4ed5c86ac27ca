"""A device that is misspelt or absent is one line naming where it came from, in every command."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from macasr.cli import app
from macasr.config import DEVICE_CHOICES
from macasr.errors import ConfigError
from macasr.model.build import resolve_device

runner = CliRunner()


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine has no CUDA device, whatever it really has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.usefixtures("no_cuda")
@pytest.mark.parametrize("source", ["--device", "[train] device"])
def test_absent_cuda_is_one_line_naming_its_source(source: str) -> None:
    with pytest.raises(ConfigError) as e:
        resolve_device("cuda", source)
    assert str(e.value).startswith(f"{source} 'cuda': cuda requested but torch.cuda.is_available() is false")
    assert str(e.value).endswith("; use auto or cpu") and "\n" not in str(e.value)


def test_a_cuda_index_beyond_the_visible_devices_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match=r"^device 'cuda:2': cuda:2 requested but 2 cuda devices are visible; use auto or cpu$"):
        resolve_device("cuda:2")


@pytest.mark.usefixtures("no_cuda")
def test_auto_falls_back_to_cpu() -> None:
    assert resolve_device("auto") == torch.device("cpu")


def test_a_misspelt_device_lists_the_choices() -> None:
    with pytest.raises(ConfigError) as e:
        resolve_device("gpu", "--device")
    assert str(e.value).startswith(f"--device: expected {DEVICE_CHOICES}, got 'gpu'")


@pytest.mark.usefixtures("no_cuda")
@pytest.mark.parametrize("command", [["transcribe", "a.wav", "--ckpt", "best.pt"], ["eval", "--ckpt", "best.pt"]], ids=lambda c: c[0])
@pytest.mark.parametrize(("device", "start"), [("cuda", "error: --device 'cuda': cuda requested"), ("gpu", "error: --device: expected auto")])
def test_device_option_is_checked_before_anything_loads(command: list[str], device: str, start: str, tmp_path: Path) -> None:
    # best.pt does not exist: the device is reported first, in one line, without a traceback.
    result = runner.invoke(app, [*command, "--device", device])
    assert result.exit_code == 1, result.output
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(start), result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.usefixtures("no_cuda")
def test_train_device_from_the_config_is_one_line(tmp_path: Path) -> None:
    from macasr import config as config_module

    (tmp_path / "t.jsonl").write_text('{"audio": "a.wav", "text": "x", "duration": 1}\n')
    # The device is resolved before any model loads, so the default hub ids are never fetched.
    cfg = config_module.replace(config_module.Config(), **{"train.device": "cuda", "data.train": [str(tmp_path / "t.jsonl")], "train.output_dir": str(tmp_path)})
    result = runner.invoke(app, ["train", str(config_module.dump(cfg, tmp_path / "c.toml"))])
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "'cuda': cuda requested but torch.cuda.is_available() is false" in lines[0], result.stderr


def test_train_device_misspelt_in_the_config_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[train]\ndevice = "gpu"\n')
    for command in (["train", str(path)], ["config", "check", str(path)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 1
        errors = [line for line in result.stderr.splitlines() if not line.startswith("note: ")]  # default hub ids
        assert errors == [f"error: {path}:2: [train] device: expected {DEVICE_CHOICES}, got 'gpu'; "
                          "a GPU is cuda (NVIDIA or AMD), mps (Apple) or xpu (Intel)"]


@pytest.mark.usefixtures("no_cuda")
@pytest.mark.parametrize(("build", "why"), [(None, "is a CPU-only build"), ("12.8", "no GPU visible")])
def test_absent_cuda_says_why(build: str | None, why: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "cuda", build)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    with pytest.raises(ConfigError, match=why):
        resolve_device("cuda")
