"""The training engine: steps on non-finite losses are refused, and run folders are never overwritten unasked."""

from __future__ import annotations

import copy
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from macasr import config as config_module
from macasr.cli import app
from macasr.train.run import training_sets
from macasr.errors import CheckpointError, MacasrError
from macasr.model.build import build_model
from macasr.train.engine import Trainer
from macasr.train.run import train
from test_model import make_batch

runner = CliRunner()


def run_config(tiny_config, corpus, out: Path, **changes):
    return config_module.replace(tiny_config, **{
        "data.train": [str(corpus["train"])], "train.output_dir": str(out), "train.name": "run",
        "train.warmup_steps": 0, "train.max_steps": 1, "train.valid_every": 1, **changes,
    })


def make_trainer(cfg) -> Trainer:
    console = Console(file=io.StringIO(), width=400)
    train_set, valid_set = training_sets(cfg)
    return Trainer(cfg, build_model(cfg), train_set, valid_set, torch.device("cpu"), "fp32", console)


def printed(trainer: Trainer) -> str:
    return trainer.console.file.getvalue()


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_same_state(a: dict, b: dict) -> None:
    """Equal nested optimizer/scheduler state dicts, tensors compared by value."""
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        elif isinstance(a[key], dict):
            assert_same_state(a[key], b[key])
        else:
            assert a[key] == b[key], key


def nan_batch(model, ids=("bad0", "bad1", "bad2")):
    """A batch whose second clip has one NaN feature: the whole micro-batch loss is NaN."""
    batch = make_batch(model)
    batch.features[1, :, 5] = float("nan")
    batch.ids = list(ids)
    return batch


# ----------------------------------------------------------------------------- non-finite guard


def test_a_step_on_a_nan_loss_is_not_taken(tiny_config, corpus, tmp_path) -> None:
    trainer = make_trainer(run_config(tiny_config, corpus, tmp_path, **{"train.grad_accum": 2}))
    good = make_batch(trainer.model)
    assert trainer._optimizer_step(iter([good, good]))[0] is not None  # optimizer state exists now
    before = weights(trainer.model), copy.deepcopy(trainer.optimizer.state_dict()), trainer.scheduler.state_dict()
    loss, _ = trainer._optimizer_step(iter([good, nan_batch(trainer.model)]))
    assert loss is None
    after = weights(trainer.model), trainer.optimizer.state_dict(), trainer.scheduler.state_dict()
    assert all(torch.equal(before[0][n], after[0][n]) for n in before[0])
    assert_same_state(before[1], after[1])
    assert before[2] == after[2]
    assert all(p.grad is None for p in trainer.model.parameters())
    # Only the micro-batch whose loss was NaN is named.
    assert "step 1: non-finite loss, step not taken (weights unchanged); clips: bad0, bad1, bad2\n" in printed(trainer)
    assert trainer._optimizer_step(iter([good, good]))[0] is not None and trainer.bad_steps == 0


def test_a_step_on_an_infinite_gradient_is_not_taken(tiny_config, corpus, tmp_path) -> None:
    trainer = make_trainer(run_config(tiny_config, corpus, tmp_path))
    before = weights(trainer.model)
    param = next(p for p in trainer.model.parameters() if p.requires_grad)
    param.register_hook(lambda g: torch.full_like(g, float("inf")))
    loss, _ = trainer._optimizer_step(iter([make_batch(trainer.model)]))
    assert loss is None and all(torch.equal(before[n], w) for n, w in weights(trainer.model).items())
    assert "non-finite gradient, step not taken (weights unchanged); clips: u0, u1, u2" in printed(trainer)


def test_a_run_that_keeps_diverging_stops_and_keeps_the_last_good_checkpoint(tiny_config, corpus, tmp_path) -> None:
    cfg = run_config(tiny_config, corpus, tmp_path, **{"train.max_steps": 6, "train.valid_every": 2})
    trainer = make_trainer(cfg)
    forward = trainer.model.forward
    trainer.model.forward = lambda batch: forward(batch) * (float("nan") if trainer.step >= 2 else 1.0)
    with pytest.raises(MacasrError) as error:
        trainer.fit()
    message = str(error.value)
    assert "\n" not in message and message.startswith("step 3: non-finite loss")
    assert f"stopped after 5 refused steps in a row ([train] max_bad_steps), keeping {cfg.run_dir / 'last.pt'} (step 2)" in message
    for name in ("best.pt", "last.pt"):
        saved = torch.load(cfg.run_dir / name, weights_only=True)
        assert saved["step"] == 2 and all(torch.isfinite(t).all() for t in saved["model"].values())
    records = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["refused_steps_in_a_row"] for r in records if "refused_steps_in_a_row" in r] == list(range(1, cfg.train.max_bad_steps + 1))


# ----------------------------------------------------------------------------- run folders


@pytest.fixture(scope="module")
def one_step_run(tiny_config, corpus, tmp_path_factory) -> Path:
    """A finished one-step run (config.toml, metrics.jsonl, curves.png, best.pt, last.pt); tests copy it."""
    out = tmp_path_factory.mktemp("one_step")
    train(run_config(tiny_config, corpus, out), Console(file=io.StringIO()))
    return out / "run"


@pytest.fixture
def run_copy(one_step_run, tmp_path) -> Path:
    shutil.copytree(one_step_run, tmp_path / "run")
    return tmp_path / "run"


def test_a_second_run_in_the_same_folder_needs_resume_or_overwrite(tiny_config, corpus, run_copy) -> None:
    config = config_module.dump(run_config(tiny_config, corpus, run_copy.parent), run_copy.parent / "c.toml")
    (run_copy / "old.pt").write_bytes(b"from an earlier experiment")
    (run_copy / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in run_copy.iterdir()}
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: {run_copy} already holds a run (config.toml, metrics.jsonl, curves.png, best.pt, last.pt, old.pt); continue it "
        "with --resume, start a new run beside it with another [train] name (e.g. --set train.name=NEW), or start over with "
        "--overwrite (removes config.toml, metrics.jsonl, curves.png, best.pt, last.pt, old.pt)"
    ]
    assert {p.name: p.read_bytes() for p in run_copy.iterdir()} == before
    result = runner.invoke(app, ["train", str(config), "--resume", "--overwrite"])
    assert result.exit_code == 1 and "give only one" in result.output
    result = runner.invoke(app, ["train", str(config), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert "--overwrite: removed config.toml, metrics.jsonl, curves.png, best.pt, last.pt, old.pt of the earlier run" in " ".join(result.output.split())
    assert not (run_copy / "old.pt").exists() and (run_copy / "notes.txt").read_text() == "mine"
    assert torch.load(run_copy / "last.pt", weights_only=True)["step"] == 1


def test_resume_without_last_pt_suggests_overwrite(tiny_config, corpus, run_copy) -> None:
    (run_copy / "last.pt").unlink()
    with pytest.raises(CheckpointError, match=r"last.pt: nothing to resume from \(the folder holds config.toml, metrics.jsonl, curves.png, best.pt\); start over with --overwrite"):
        train(run_config(tiny_config, corpus, run_copy.parent), resume=True)
    shutil.rmtree(run_copy)
    with pytest.raises(CheckpointError, match=r"last.pt: nothing to resume from; start the run without --resume"):
        train(run_config(tiny_config, corpus, run_copy.parent), resume=True)


def test_resume_from_a_weights_only_checkpoint_says_what_is_missing(tiny_config, corpus, run_copy) -> None:
    shutil.copy(run_copy / "best.pt", run_copy / "last.pt")
    with pytest.raises(CheckpointError, match=r"last.pt: lacks optimizer, scheduler, rng, epoch, batches_in_epoch, "
                                              r"bad_validations, needed for --resume; it holds weights only, like a best.pt"):
        train(run_config(tiny_config, corpus, run_copy.parent), resume=True)


def test_resume_with_a_config_that_changes_the_model_or_data_is_refused_naming_the_keys(tiny_config, corpus, run_copy) -> None:
    cfg = run_config(tiny_config, corpus, run_copy.parent, **{
        "model.connector.hidden_dim": 32, "model.connector.dropout": 0.2, "data.spec_augment": True, "train.patience": 9,
    })
    before = (run_copy / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointError) as error:
        train(cfg, Console(file=io.StringIO()), resume=True)
    assert str(error.value) == (
        f"{run_copy / 'last.pt'}: the given config changes the model, data or optimizer this run was trained with "
        "(data.spec_augment: False in the checkpoint, True given; model.connector.dropout: 0.0 in the checkpoint, 0.2 given; "
        "model.connector.hidden_dim: 64 in the checkpoint, 32 given); resume with the settings stored in it "
        "(the run folder's config.toml), or start over with --overwrite"
    )
    assert (run_copy / "metrics.jsonl").read_text() == before and not (run_copy / "train.lock").exists()


def test_resume_with_safe_changes_lists_them(tiny_config, corpus, run_copy) -> None:
    out = io.StringIO()
    cfg = run_config(tiny_config, corpus, run_copy.parent, **{
        "train.max_steps": 2, "train.patience": 9, "logging.log_every": 3, "data.num_workers": 1,
    })
    result = train(cfg, Console(file=out, width=400), resume=True)
    assert result.steps == 2
    printed = " ".join(out.getvalue().split())
    assert "resuming with settings that differ from" in printed
    for change in ("data.num_workers: 0 in the checkpoint, 1 given", "logging.log_every: 10 in the checkpoint, 3 given",
                   "train.max_steps: 1 in the checkpoint, 2 given", "train.patience: 5 in the checkpoint, 9 given"):
        assert change in printed


def test_a_validation_set_with_no_readable_clip_stops_the_run_instead_of_scoring_zero(tiny_config, corpus, tmp_path: Path) -> None:
    """Every valid clip unreadable used to give "valid WER 0.00 %, new best"; it is no WER at all."""
    valid = tmp_path / "valid.jsonl"
    valid.write_text(json.dumps({"audio": str(tmp_path / "gone.wav"), "text": "hello world", "duration": 1.0}) + "\n")
    cfg = run_config(tiny_config, corpus, tmp_path, **{"data.valid": [str(valid)]})
    trainer = make_trainer(cfg)
    with pytest.raises(MacasrError, match=r"^\[data\] valid: no utterance could be scored \(1 clip skipped"):
        trainer.fit()
    assert "gone.wav: no such audio file" in printed(trainer)
    assert (cfg.run_dir / "last.pt").is_file() and not (cfg.run_dir / "best.pt").exists()


def test_a_run_that_failed_before_its_first_step_can_simply_be_rerun(tiny_config, corpus, tmp_path: Path) -> None:
    """Nothing of value is in a folder holding only config.toml and an empty metrics.jsonl."""
    cfg = run_config(tiny_config, corpus, tmp_path)
    cfg.run_dir.mkdir(parents=True)
    config_module.dump(cfg, cfg.run_dir / "config.toml")
    (cfg.run_dir / "metrics.jsonl").write_text("")
    console = Console(file=io.StringIO(), width=400)
    assert train(cfg, console).steps == 1
    assert "a run that never took a step: removed config.toml, metrics.jsonl" in console.file.getvalue()


def test_a_training_set_with_no_readable_clip_stops_instead_of_looping(tiny_config, corpus, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"audio": str(tmp_path / f"gone{i}.wav"), "text": "hi", "duration": 1.0}) + "\n"
                           for i in range(3)))
    cfg = run_config(tiny_config, corpus, tmp_path, **{"data.train": [str(bad)]})
    with pytest.raises(MacasrError, match=r"^\[data\] train: none of the 3 training clips could be read"):
        train(cfg, Console(file=io.StringIO()))


def test_a_max_duration_that_drops_every_clip_is_one_line(tiny_config, corpus, tmp_path: Path) -> None:
    cfg = run_config(tiny_config, corpus, tmp_path, **{"data.max_duration": 0.01})
    with pytest.raises(MacasrError) as error:
        train(cfg, Console(file=io.StringIO()))
    assert str(error.value) == ("[data] train: none of the 32 clips of `train` is within its duration limits "
                                "(at most 0.01 s; [datasets.train] and [data] min_duration/max_duration); "
                                "loosen them or leave it out of [data] train")


def test_best_pt_names_itself_as_the_best(tiny_config, corpus, tmp_path) -> None:
    cfg = run_config(tiny_config, corpus, tmp_path, **{"data.valid": [str(corpus["valid"])], "train.max_steps": 2})
    result = train(cfg)
    best = torch.load(result.run_dir / "best.pt", weights_only=True)
    assert best["metrics"]["best_step"] == best["step"] == result.best_step
    assert best["metrics"]["best_wer"] == result.best_wer is not None


def test_training_on_the_cpu_leaves_the_loader_workers_their_cores(tiny_config, corpus, tmp_path, monkeypatch) -> None:
    """torch's threads plus busy workers would oversubscribe the cores (docs/performance.md)."""
    import os

    from macasr.train.engine import Trainer as EngineTrainer

    seen = []
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(4)), raising=False)
    monkeypatch.setattr(EngineTrainer, "fit", lambda self: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        train(run_config(tiny_config, corpus, tmp_path, **{"data.num_workers": 2}))
        assert seen == [2] and torch.get_num_threads() == 4  # 4 cores - 2 workers, restored afterwards
    finally:
        torch.set_num_threads(before)
