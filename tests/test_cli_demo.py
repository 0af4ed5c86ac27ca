"""The demo's own output: no stray third-party bars, and closing hints a user can run as printed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from macasr import demo


def _install(root: Path, script: bool = True) -> Path:
    """A fake environment: bin/python and, optionally, the bin/macasr script beside it."""
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text("")
    if script:
        (bin_dir / "macasr").write_text("#!/bin/sh\n")
        (bin_dir / "macasr").chmod(0o755)
    return bin_dir


def test_after_make_demo_the_hint_names_the_venv_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = _install(tmp_path)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the venv is not activated
    assert demo.macasr_command(tmp_path) == ".venv/bin/macasr"
    assert demo.macasr_command(tmp_path / "elsewhere") == str(bin_dir / "macasr")


def test_with_the_venv_on_path_the_hint_says_macasr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = _install(tmp_path)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin")
    assert demo.macasr_command(tmp_path) == "macasr"


def test_another_macasr_on_path_is_not_this_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = _install(tmp_path / "mine")
    other = _install(tmp_path / "other")
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.setenv("PATH", str(other))
    assert demo.macasr_command(tmp_path / "mine") == ".venv/bin/macasr"


def test_without_a_script_the_hint_runs_the_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = _install(tmp_path, script=False)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    assert demo.macasr_command(tmp_path) == ".venv/bin/python -m macasr"


@pytest.mark.parametrize("out", [demo.DEMO_DIR, Path("runs/other")], ids=["default", "other"])
def test_the_hints_use_the_command_and_never_train_into_the_demo(out: Path) -> None:
    lines = demo.try_next(out, "runs/demo/data/test/0 1.wav", ".venv/bin/macasr").splitlines()
    assert all(line.strip().startswith(".venv/bin/macasr ") for line in lines)
    assert "transcribe 'runs/demo/data/test/0 1.wav' --ckpt " + str(out / "best.pt") in lines[0]  # quoted for the shell
    init = lines[-1]
    assert "config init my.toml --preset demo" in init and "set [train] name" in init
    assert init.endswith(".venv/bin/macasr train my.toml")
    assert ("point its runs/demo paths at runs/other" in init) == (out != demo.DEMO_DIR)


def test_saving_the_demo_models_draws_no_progress_bars(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "train.jsonl"
    manifest.write_text('{"audio": "a.wav", "text": "hello world", "duration": 1.0}\n')
    capfd.readouterr()
    demo.build_models(tmp_path, manifest, seed=0)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == "", captured
    from transformers.utils import logging

    assert logging.is_progress_bar_enabled()  # switched back on for everything else
