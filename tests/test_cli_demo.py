"""The demo's own output: no stray third-party bars, and closing hints a user can run as printed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from macasr import demo
from macasr.cli import app
from macasr.train.threads import threads_beside_workers


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


def test_unseen_voices_are_scored_one_by_one(tmp_path: Path) -> None:
    from macasr.data.manifest import write_manifest
    from macasr.evaluate.wer import score

    rows = [{"id": f"{i}", "audio": f"{i}.wav", "text": "the red fox jumps", "duration": 1.0 + i,
             "speaker": ["en+whisper", "en+croak"][i % 2]} for i in range(4)]
    manifest = write_manifest(tmp_path / "unseen.jsonl", rows)
    hyps = {"0": "the red fox jumps", "1": "the red", "2": "the red fox", "3": "the red fox jumps"}
    scored = [r for r in rows if r["id"] != "2"] + [rows[2]]  # decoded in another order
    result = score("unseen", [r["id"] for r in scored], [r["text"] for r in scored], [hyps[r["id"]] for r in scored],
                   [r["duration"] for r in scored], "whisper")
    voices = demo.per_speaker(result, manifest, "whisper")
    assert [v.name for v in voices] == ["en+whisper", "en+croak"]  # in the manifest's order
    assert [v.counts.word_errors for v in voices] == [1, 2] and [v.counts.ref_words for v in voices] == [8, 8]
    assert [v.utterances for v in voices] == [2, 2]
    assert voices[0].hours == pytest.approx((1.0 + 3.0) / 3600)


def test_a_voice_whose_clips_were_all_skipped_gets_no_row(tmp_path: Path) -> None:
    from macasr.data.manifest import write_manifest
    from macasr.evaluate.wer import score

    rows = [{"id": "a", "audio": "a.wav", "text": "hello", "duration": 1.0, "speaker": "en+m7"},
            {"id": "b", "audio": "b.wav", "text": "hello", "duration": 1.0, "speaker": "en+f5"}]
    manifest = write_manifest(tmp_path / "unseen.jsonl", rows)
    result = score("unseen", ["b"], ["hello"], ["hello"], [1.0], "whisper", skipped=["a.wav: unreadable"])
    assert [v.name for v in demo.per_speaker(result, manifest, "whisper")] == ["en+f5"]


def test_the_demo_preset_scores_the_unseen_voices_and_the_telephone_band(tmp_path: Path) -> None:
    from macasr import config as config_module

    preset = config_module.load_preset("demo")
    assert {demo.UNSEEN_SET, demo.NARROWBAND_SET} <= set(preset.eval.test_sets)
    manifests = {name: tmp_path / f"{name}.jsonl" for name in preset.datasets}
    cfg = demo.demo_config(tmp_path / "run", manifests, tmp_path / "w", tmp_path / "q", None)
    assert {name: ds.manifest for name, ds in cfg.datasets.items()} == {n: [str(p)] for n, p in manifests.items()}


@pytest.mark.parametrize(("cpus", "workers", "expected"), [(2, 1, 1), (4, 1, 3), (8, 2, 4), (1, 1, 1)])
def test_training_threads_leave_the_workers_their_cores(monkeypatch: pytest.MonkeyPatch, cpus: int, workers: int,
                                                        expected: int) -> None:
    import torch

    before = torch.get_num_threads()
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(cpus)), raising=False)
    try:
        torch.set_num_threads(4)
        with threads_beside_workers(workers):
            assert torch.get_num_threads() == expected  # never more than torch had (4)
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("signal", "code"), [("SIGINT", 130), ("SIGTERM", 0)])
def test_a_stopped_demo_training_says_how_to_resume_and_does_not_evaluate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                          signal: str, code: int) -> None:
    from macasr.train import run
    from macasr.train.engine import TrainResult

    names = ("train", "valid", "test", "test_unseen_voice", "test_narrowband")
    monkeypatch.setattr(demo, "synthesize_corpus", lambda out, console, seed: {n: tmp_path / f"{n}.jsonl" for n in names})
    monkeypatch.setattr(demo, "build_models", lambda out, manifest, seed: (tmp_path / "whisper", tmp_path / "qwen3"))
    out = tmp_path / "demo"
    encoded = []
    monkeypatch.setattr("macasr.cli.cache_cmd.encode_sources", lambda cfg, **k: encoded.append(cfg.data.cache))
    monkeypatch.setattr(run, "train", lambda cfg, console, overwrite: TrainResult(3, None, None, False, out, signal))
    evaluated = []
    monkeypatch.setattr("macasr.train.checkpoint.restore_model", lambda *a, **k: evaluated.append(a))
    result = CliRunner().invoke(app, ["demo", "--out", str(out)])
    text = " ".join(result.output.split())
    assert result.exit_code == code, result.output
    assert f"{signal}: demo training stopped at step 3, before evaluation" in text
    assert f"macasr train {out / 'config.toml'} --resume" in text and not evaluated
    assert encoded == [str(out / "cache")]  # the frames go inside the demo's own folder, encoded before training
