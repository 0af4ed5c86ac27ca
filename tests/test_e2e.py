"""End to end as a user runs it: `macasr train` on a tiny spoken corpus, then `macasr eval`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from macasr import config as config_module
from macasr.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def trained_run(tiny_config, corpus, tmp_path_factory) -> tuple[Path, Path]:
    """Train 6 optimizer steps (2 micro-batches each), validating every 3."""
    root = tmp_path_factory.mktemp("e2e")
    cfg = config_module.replace(tiny_config, **{
        "data.train": [str(corpus["train"])], "data.valid": [str(corpus["valid"])],
        "train.output_dir": str(root / "runs"), "train.name": "tiny", "train.max_steps": 6, "train.warmup_steps": 2,
        "train.valid_every": 3, "train.grad_accum": 2, "train.lr": 1e-3, "logging.log_every": 2,
        "datasets": {"test": config_module.DatasetConfig(manifest=[str(corpus["test"])])}, "eval.test_sets": ["test"],
    })
    path = config_module.dump(cfg, root / "tiny.toml")
    result = runner.invoke(app, ["train", str(path)])
    assert result.exit_code == 0, result.output
    return path, root / "runs" / "tiny"


def test_train_writes_the_run_folder(trained_run) -> None:
    _, run = trained_run
    assert {p.name for p in run.iterdir()} >= {"config.toml", "metrics.jsonl", "best.pt", "last.pt"}
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]
    assert [r["step"] for r in records if "valid_wer" in r] == [3, 6]
    assert all({"lr", "audio_seconds_per_second"} <= set(r) for r in records if "loss" in r)
    saved = config_module.load(run / "config.toml")
    assert saved.train.max_steps == 6 and Path(saved.data.train[0]).is_absolute()


def test_checkpoints_hold_only_tensors_and_plain_types(trained_run) -> None:
    _, run = trained_run
    best = torch.load(run / "best.pt", weights_only=True)
    last = torch.load(run / "last.pt", weights_only=True)
    assert best["step"] in (3, 6) and last["step"] == 6
    assert set(best["model"]) == set(last["model"]) and all(k.startswith("connector.") for k in best["model"])
    assert {"optimizer", "scheduler", "rng"} <= set(last) and "optimizer" not in best
    assert last["scheduler"]["last_epoch"] == 6  # one scheduler step per optimizer step, not per micro-batch
    assert config_module.from_dict(best["config"]).train.max_steps == 6


def test_eval_reads_the_run_back_and_writes_a_report(trained_run, corpus, tmp_path) -> None:
    _, run = trained_run
    report = tmp_path / "report.json"
    result = runner.invoke(app, ["eval", "--ckpt", str(run / "best.pt"), "--dataset", "test", "--manifest", str(corpus["valid"]), "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert "test" in result.stdout and "overall" in result.stdout and "normalizer: basic" in result.stdout
    data = json.loads(report.read_text())
    assert data["normalizer"] == "basic" and set(data["datasets"]) == {"test", "valid"}
    assert data["datasets"]["test"]["utterances"] == len(corpus["test"].read_text().splitlines())
    assert 0 <= data["datasets"]["test"]["wer"]
    lines = report.with_name("report.utterances.jsonl").read_text().splitlines()
    assert len(lines) == data["overall"]["utterances"]


def test_eval_can_take_the_checkpoint_from_the_config(trained_run) -> None:
    config, _ = trained_run
    result = runner.invoke(app, ["eval", "--config", str(config), "--dataset", "test"])
    assert result.exit_code == 0, result.output


def test_transcribe_a_corpus_clip(trained_run, corpus) -> None:
    _, run = trained_run
    clip = json.loads(corpus["test"].read_text().splitlines()[0])["audio"]
    result = runner.invoke(app, ["transcribe", str(corpus["test"].parent / clip), "--ckpt", str(run / "best.pt")])
    assert result.exit_code == 0, result.output


def test_resume_continues_from_last(trained_run) -> None:
    config, run = trained_run
    before = torch.load(run / "last.pt", weights_only=True)
    result = runner.invoke(app, ["train", str(config), "--resume"])
    assert result.exit_code == 0, result.output
    assert "resumed from" in result.stdout and "done: 6 steps" in result.stdout
    after = torch.load(run / "last.pt", weights_only=True)
    assert after["step"] == before["step"] == 6


def test_early_stopping_after_patience_runs_out(tiny_config, corpus, tmp_path) -> None:
    cfg = config_module.replace(tiny_config, **{
        "data.train": [str(corpus["train"])], "data.valid": [str(corpus["valid"])],
        "train.output_dir": str(tmp_path), "train.name": "stop", "train.max_steps": 50, "train.warmup_steps": 0,
        "train.lr": 1e-12, "train.valid_every": 1, "train.patience": 2,  # WER cannot improve at this lr
    })
    result = runner.invoke(app, ["train", str(config_module.dump(cfg, tmp_path / "stop.toml"))])
    assert result.exit_code == 0, result.output
    assert "early stop" in result.stdout and "done: 3 steps" in result.stdout
    records = [json.loads(line) for line in (tmp_path / "stop" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "valid_wer" in r] == [1, 2, 3]
    assert torch.load(tmp_path / "stop" / "best.pt", weights_only=True)["step"] == 1


def test_same_seed_gives_identical_weights(tiny_config, corpus, tmp_path) -> None:
    from macasr.train.run import train

    weights = []
    for name in ("a", "b"):
        cfg = config_module.replace(tiny_config, **{
            "data.train": [str(corpus["train"])], "train.output_dir": str(tmp_path), "train.name": name,
            "train.max_steps": 3, "train.warmup_steps": 1, "train.valid_every": 3, "data.spec_augment": True,
            "model.connector.dropout": 0.1,
        })
        train(cfg)
        weights.append(torch.load(tmp_path / name / "last.pt", weights_only=True)["model"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_python_api_loads_a_checkpoint_and_transcribes(trained_run, corpus) -> None:
    import macasr

    _, run = trained_run
    clip = corpus["test"].parent / json.loads(corpus["test"].read_text().splitlines()[0])["audio"]
    (result,) = macasr.load(str(run / "best.pt"), device="cpu").transcribe([clip])
    assert result.error is None and isinstance(result.text, str) and result.duration > 0
