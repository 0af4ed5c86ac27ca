"""Checkpoints and resume: an interrupted run continues bit for bit, metrics.jsonl holds each step
once, the k best checkpoints are kept, last.pt is written between validations."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from macasr import config as config_module
from macasr.cli import app
from macasr.data.augment import SpecAugment, spec_augment
from macasr.fileio import write_atomic
from macasr.model.build import build_model
from macasr.train import engine
from macasr.train.engine import Trainer
from macasr.train.resume import BestCheckpoints, is_fixed, split_changes, truncate_metrics
from macasr.train.run import training_sets

runner = CliRunner()


def run_config(tiny_config, corpus, out: Path, name: str, **changes):
    return config_module.replace(tiny_config, **{
        "data.train": [str(corpus["train"])], "train.output_dir": str(out), "train.name": name,
        "train.warmup_steps": 0, "train.max_steps": 1, "train.valid_every": 1, **changes,
    })


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def logged(run: Path) -> list[tuple]:
    """What training logged, without the wall-clock fields that differ between any two runs."""
    return [tuple((k, v) for k, v in r.items() if k not in ("time", "audio_seconds_per_second", "audio_seconds_per_second_per_process", "peak_rss_mib")) for r in records(run)]


def invoke(cfg, toml: Path, *args: str):
    result = runner.invoke(app, ["train", str(config_module.dump(cfg, toml)), *args])
    assert result.exit_code == 0, result.output
    return result


# ----------------------------------------------------------------------------- exact resume


def test_n_steps_then_resume_then_n_steps_equals_2n_steps_bit_for_bit(tiny_config, corpus, tmp_path: Path) -> None:
    """With SpecAugment, speed and gain augmentation, dropout and a DataLoader worker; across an
    epoch end; with a crash's leftovers (metrics lines past last.pt, a temporary file) in the folder."""
    settings = {
        "data.valid": [str(corpus["valid"])], "eval.valid_max_utterances": 2, "data.num_workers": 1,
        "data.batch_size": 8, "data.num_buckets": 1, "train.grad_accum": 2, "train.valid_every": 2, "train.min_lr_ratio": 1.0,
        "data.spec_augment": True, "augment.speed_prob": 0.5, "augment.speed_factors": [0.9, 1.1],
        "augment.gain_prob": 0.5, "model.connector.dropout": 0.1, "logging.log_every": 1,
    }
    straight = run_config(tiny_config, corpus, tmp_path, "straight", **settings, **{"train.max_steps": 4})
    invoke(straight, tmp_path / "straight.toml")

    first = run_config(tiny_config, corpus, tmp_path, "resumed", **settings, **{"train.max_steps": 2})
    invoke(first, tmp_path / "resumed.toml")
    run = first.run_dir
    with (run / "metrics.jsonl").open("a") as f:  # logged by a run killed after its last.pt
        f.write(json.dumps({"step": 3, "loss": 9.9}) + "\n" + '{"step": 4, "lo')
    (run / ".last.pt.0123456789ab.tmp").write_bytes(b"half a checkpoint")
    result = invoke(config_module.replace(first, **{"train.max_steps": 4}), tmp_path / "resumed.toml", "--resume")
    out = " ".join(result.output.split())
    assert "removed 1 stale temporary file left in" in out and "resumed from" in out and "at step 2" in out
    assert "metrics.jsonl: dropped 2 lines past step 2" in out and "done: 4 steps" in out

    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in straight.run_dir.iterdir()) == [
        "best.pt", "config.toml", "curves.png", "last.pt", "metrics.jsonl"]
    a, b = (torch.load(r / "last.pt", weights_only=True) for r in (straight.run_dir, run))
    assert a["step"] == b["step"] == 4 and a["epoch"] == b["epoch"] >= 1  # an epoch ended on the way
    assert [r["step"] for r in records(run) if "loss" in r] == [1, 2, 3, 4]
    assert logged(run) == logged(straight.run_dir)
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_spec_augment_masks_depend_on_seed_epoch_and_clip_only() -> None:
    features = torch.randn(80, 200)
    masks = SpecAugment(seed=3)
    torch.manual_seed(0)
    first = masks(features, "utt-1", 0)
    torch.manual_seed(1)  # the global RNG plays no part
    assert torch.equal(masks(features, "utt-1", 0), first) and not torch.equal(first, features)
    assert not torch.equal(masks(features, "utt-2", 0), first)
    assert not torch.equal(masks(features, "utt-1", 1), first)
    assert not torch.equal(SpecAugment(seed=4)(features, "utt-1", 0), first)
    state = torch.get_rng_state()
    spec_augment(features, torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)


# ----------------------------------------------------------------------------- metrics.jsonl


def test_truncate_metrics_keeps_each_step_up_to_the_resumed_one(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 2, "valid_wer": 0.5}, {"step": 3, "loss": 1.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 4, "lo')
    assert truncate_metrics(path, 2) == 2
    assert [json.loads(line) for line in path.read_text().splitlines()] == lines[:3]
    assert truncate_metrics(path, 2) == 0
    assert truncate_metrics(tmp_path / "none.jsonl", 2) == 0 and not (tmp_path / "none.jsonl").exists()


# ----------------------------------------------------------------------------- config changes


def test_model_and_data_changes_refuse_a_resume_and_others_do_not() -> None:
    for key in ("model.connector.hidden_dim", "prompt.prefix", "data.train", "data.spec_augment", "datasets.ls.manifests",
                "augment.speed_prob", "train.seed"):
        assert is_fixed(key), key
    for key in ("train.max_steps", "train.valid_every", "train.patience", "train.save_every", "train.keep_best",
                "train.lr", "logging.log_every", "eval.batch_size", "data.num_workers", "data.on_bad_clip"):
        assert not is_fixed(key), key
    fixed, allowed = split_changes(["model.llm.train: False in the checkpoint, True given", "train.max_steps: 1 in the checkpoint, 2 given"])
    assert fixed == ["model.llm.train: False in the checkpoint, True given"] and allowed == ["train.max_steps: 1 in the checkpoint, 2 given"]


# ----------------------------------------------------------------------------- keep_best


def saver(run_dir: Path, step: list[int]):
    def save(name: str) -> None:  # replaces the file, as save_checkpoint does (a hard link keeps the old one)
        write_atomic(run_dir / name, str(step[0]))
    return save


def test_keep_best_keeps_the_k_lowest_wers_and_deletes_worse_ones(tmp_path: Path) -> None:
    best, step = BestCheckpoints(tmp_path, keep=3), [0]
    for step[0], wer in enumerate([0.5, 0.4, 0.6, 0.45, 0.3, 0.7], start=1):
        best.add(wer, step[0], saver(tmp_path, step))
    files = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert files == {"best.pt": "5", "best-step2.pt": "2", "best-step4.pt": "4"}
    assert best.state() == [[0.3, 5], [0.4, 2], [0.45, 4]]
    again = BestCheckpoints(tmp_path, keep=3)
    again.restore(best.state(), 0.3, 5)
    assert again.kept == best.kept
    fewer = BestCheckpoints(tmp_path, keep=2)  # resumed with keep_best lowered
    fewer.restore(best.state(), 0.3, 5)
    assert fewer.kept == [(0.3, 5), (0.4, 2)] and sorted(p.name for p in tmp_path.iterdir()) == ["best-step2.pt", "best.pt"]


def test_keep_best_one_keeps_best_pt_alone(tmp_path: Path) -> None:
    best, step = BestCheckpoints(tmp_path, keep=1), [0]
    for step[0], wer in enumerate([0.5, 0.4, 0.6], start=1):
        best.add(wer, step[0], saver(tmp_path, step))
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"best.pt": "2"}


def make_trainer(cfg) -> Trainer:
    return Trainer(cfg, build_model(cfg), *training_sets(cfg), torch.device("cpu"), "fp32", Console(file=io.StringIO(), width=400))


def test_a_run_keeps_its_k_best_checkpoints_through_a_resume(tiny_config, corpus, tmp_path, monkeypatch) -> None:
    wers = iter([0.5, 0.4, 0.6, 0.3])
    monkeypatch.setattr(engine, "evaluate_cuts", lambda *a, **k: SimpleNamespace(wer=next(wers), cer=0.1, problem=None, warnings=[]))
    cfg = run_config(tiny_config, corpus, tmp_path, "k", **{"data.valid": [str(corpus["valid"])], "train.keep_best": 2,
                                                             "train.max_steps": 2})
    make_trainer(cfg).fit()
    trainer = make_trainer(config_module.replace(cfg, **{"train.max_steps": 4}))
    trainer.resume(cfg.run_dir / "last.pt")
    trainer.fit()
    steps = {p.name: torch.load(p, weights_only=True)["step"] for p in cfg.run_dir.glob("*.pt")}
    assert steps == {"best.pt": 4, "best-step2.pt": 2, "last.pt": 4}


# ----------------------------------------------------------------------------- save_every


@pytest.mark.parametrize(("save_every", "expected"), [(2, [2, 4, 5]), (0, [5])])
def test_save_every_writes_last_pt_between_validations(tiny_config, corpus, tmp_path, save_every, expected) -> None:
    cfg = run_config(tiny_config, corpus, tmp_path, "s", **{"train.max_steps": 5, "train.valid_every": 100,
                                                             "train.save_every": save_every})
    trainer = make_trainer(cfg)
    saved: list[int] = []
    save = trainer._save
    trainer._save = lambda name, with_state=False: (saved.append(trainer.step) if name == "last.pt" else None, save(name, with_state))
    trainer.fit()
    assert saved == expected
    assert torch.load(cfg.run_dir / "last.pt", weights_only=True)["step"] == 5


# ----------------------------------------------------------------------------- --resume-from, config rules


def test_resume_from_a_given_last_pt_continues_into_the_configs_run_folder(tiny_config, corpus, tmp_path) -> None:
    source = run_config(tiny_config, corpus, tmp_path, "a")
    invoke(source, tmp_path / "a.toml")
    moved = tmp_path / "kept" / "last.pt"
    moved.parent.mkdir()
    (source.run_dir / "last.pt").rename(moved)
    target = run_config(tiny_config, corpus, tmp_path, "b", **{"train.max_steps": 2})
    result = invoke(target, tmp_path / "b.toml", "--resume-from", str(moved))
    assert f"resumedfrom{moved}atstep1".replace(" ", "") in "".join(result.output.split())
    assert torch.load(target.run_dir / "last.pt", weights_only=True)["step"] == 2
    missing = runner.invoke(app, ["train", str(tmp_path / "b.toml"), "--resume-from", str(tmp_path / "gone.pt")])
    assert missing.exit_code == 1 and missing.stderr.strip() == f"error: {tmp_path / 'gone.pt'}: nothing to resume from (no such file)"
    folder = runner.invoke(app, ["train", str(tmp_path / "b.toml"), "--resume-from", str(moved.parent)])
    assert folder.exit_code == 1 and "is a folder, not a checkpoint file; give the last.pt in it" in folder.stderr
    both = runner.invoke(app, ["train", str(tmp_path / "b.toml"), "--resume", "--resume-from", str(moved)])
    assert both.exit_code == 1 and "give only one" in both.stderr


def test_resume_from_never_mixes_two_runs_in_one_folder(tiny_config, corpus, tmp_path) -> None:
    """The run folder already holds another run that took steps: --resume-from would overwrite its
    last.pt and append to its metrics; refused, and the folder's own run is untouched."""
    first = run_config(tiny_config, corpus, tmp_path, "a")
    invoke(first, tmp_path / "a.toml")
    other = run_config(tiny_config, corpus, tmp_path, "b")
    invoke(other, tmp_path / "b.toml")
    before = (other.run_dir / "last.pt").read_bytes(), (other.run_dir / "metrics.jsonl").read_text()
    result = runner.invoke(app, ["train", str(tmp_path / "b.toml"), "--resume-from", str(first.run_dir / "last.pt")])
    assert result.exit_code == 1 and "would mix two runs" in " ".join(result.stderr.split())
    assert ((other.run_dir / "last.pt").read_bytes(), (other.run_dir / "metrics.jsonl").read_text()) == before


@pytest.mark.parametrize(("key", "value", "rule"), [
    ("save_every", -1, "must be 0 (only at validation) or positive"), ("keep_best", 0, "must be at least 1 (best.pt)"),
    ("max_bad_steps", 0, "must be at least 1"),
])
def test_checkpoint_and_fault_settings_are_checked(key, value, rule) -> None:
    problems = dataclasses.replace(config_module.Config().train, **{key: value}).validate()
    assert problems == [f"[train] {key}: {rule}, got {value!r}"]


def test_a_key_the_checkpoint_predates_is_no_change_at_its_default() -> None:
    from macasr.train.engine import config_changes
    from macasr.train.resume import with_defaults

    defaults = {"model": {"llm": {"path": "x", "new_key": False}}, "train": {"save_every": 500}}
    stored = with_defaults({"model": {"llm": {"path": "x"}}, "train": {}}, defaults)
    assert config_changes(stored, defaults, ("model", "train")) == []
    given = {"model": {"llm": {"path": "x", "new_key": True}}, "train": {"save_every": 500}}
    assert config_changes(stored, given, ("model", "train")) == ["model.llm.new_key: False in the checkpoint, True given"]


def test_cached_frames_are_masked_per_clip_and_epoch_with_frame_mask() -> None:
    """[data] frame_mask: SpecAugment's masks on cached frames (T, D), seeded like those on features."""
    from lhotse import MonoCut
    from macasr.data.loader import CutDataset

    frames = torch.randn(40, 16)  # (T, D)
    dataset = CutDataset(lambda wave: wave, frames_from=lambda cut: frames.clone(), feature_augment=SpecAugment(seed=0))
    cut = MonoCut(id="utt-1", start=0.0, duration=0.8, channel=0)
    torch.manual_seed(5)
    first = dataset.example(cut, epoch=0).features  # (D, T)
    torch.manual_seed(6)
    assert torch.equal(dataset.example(cut, epoch=0).features, first) and not torch.equal(first, frames.T)
    assert torch.equal(first, SpecAugment(seed=0)(frames.T, "utt-1", 0))
    assert not torch.equal(dataset.example(cut, epoch=1).features, first)


# ----------------------------------------------------------------------------- other connectors, moved folders


@pytest.mark.parametrize("name", ["linear", "qformer", "transformer"])
def test_a_stored_component_table_is_compared_with_its_own_components_defaults(name) -> None:
    """A stored linear connector lacks mlp's hidden_dim and dropout: it must not gain them from the
    default (mlp) connector's table, or every resume of a non-mlp run is refused."""
    from macasr.train.engine import config_changes
    from macasr.train.resume import stored_with_defaults

    cfg = config_module.loads(f'[model.connector]\nname = "{name}"\n')
    stored = config_module.to_dict(cfg)
    assert config_changes(stored_with_defaults(stored), stored) == []
    older = {**stored, "model": {**stored["model"], "connector": {k: v for k, v in stored["model"]["connector"].items() if k != "downsampler"}}}
    assert stored_with_defaults(older)["model"]["connector"] == stored["model"]["connector"]  # filled from its own defaults
    unknown = {"model": {"connector": {"name": "not-loaded", "width": 3}}}
    assert stored_with_defaults(unknown)["model"]["connector"] == {"name": "not-loaded", "width": 3}


def test_a_linear_connector_run_resumes_from_its_own_config_toml(tiny_config, corpus, tmp_path) -> None:
    from macasr.model.connector_config import LinearConnectorConfig

    cfg = run_config(tiny_config, corpus, tmp_path, "lin", **{"model.connector": LinearConnectorConfig(downsample=2)})
    invoke(cfg, tmp_path / "lin.toml")
    result = runner.invoke(app, ["train", str(cfg.run_dir / "config.toml"), "--set", "train.max_steps=2", "--resume"])
    assert result.exit_code == 0, result.output
    assert torch.load(cfg.run_dir / "last.pt", weights_only=True)["step"] == 2


def test_a_qformer_run_resumes(tiny_config, corpus, tmp_path) -> None:
    from macasr.model.connector_config import QFormerConnectorConfig

    cfg = run_config(tiny_config, corpus, tmp_path, "q", **{"model.connector": QFormerConnectorConfig(downsample=2, layers=1, heads=2, dim=32)})
    make_trainer(cfg).fit()
    trainer = make_trainer(config_module.replace(cfg, **{"train.max_steps": 2}))
    trainer.resume(cfg.run_dir / "last.pt")
    assert trainer.step == 1


def _models_at(tiny_models, folder: Path) -> tuple[Path, Path]:
    import shutil

    return tuple(Path(shutil.copytree(src, folder / src.name)) for src in tiny_models)


def test_a_run_resumes_with_its_model_folders_given_at_their_new_place(tiny_config, tiny_models, corpus, tmp_path) -> None:
    """A path says where a model's weights are, not what the model is: a moved folder may be given
    anew; the resume says so, and the trained weights are still checked against it."""
    whisper, qwen = _models_at(tiny_models, tmp_path / "m1")
    cfg = run_config(tiny_config, corpus, tmp_path, "c", **{"model.encoder.path": str(whisper), "model.llm.path": str(qwen)})
    invoke(cfg, tmp_path / "c.toml")
    (tmp_path / "m1").rename(tmp_path / "m2")
    moved = ["--set", f"model.encoder.path={tmp_path / 'm2' / whisper.name}", "--set", f"model.llm.path={tmp_path / 'm2' / qwen.name}"]
    result = runner.invoke(app, ["train", str(tmp_path / "c.toml"), "--set", "train.max_steps=2", *moved, "--resume"])
    assert result.exit_code == 0, result.output
    out = "".join(result.output.split())  # rich wraps long paths anywhere
    assert "".join("model folders given at another place than when it was written".split()) in out
    assert "".join(f"model.llm.path: '{qwen}' in the checkpoint, '{tmp_path / 'm2' / qwen.name}' given".split()) in out
    assert torch.load(cfg.run_dir / "last.pt", weights_only=True)["step"] == 2

    from conftest import SENTENCES
    from macasr import testing

    wider = testing.save_tiny_qwen3(tmp_path / "wider", testing.train_tokenizer(SENTENCES * 5, vocab_size=150), hidden=48)
    result = runner.invoke(app, ["train", str(tmp_path / "c.toml"), "--set", "train.max_steps=3", "--set",
                                 f"model.encoder.path={tmp_path / 'm2' / whisper.name}", "--set", f"model.llm.path={wider}", "--resume"])
    assert result.exit_code == 1
    assert "inthecheckpointbut[48," in "".join(result.stderr.split())
    assert "withmodelfoldersotherthanthecheckpoint's" in "".join(result.stderr.split())


def test_a_folder_path_is_no_fixed_change_but_the_model_table_is() -> None:
    from macasr.train.resume import moved_folders

    changes = ["model.llm.path: 'a' in the checkpoint, 'b' given", "model.encoder.path: 'c' in the checkpoint, 'd' given",
               "model.llm.lora.r: 8 in the checkpoint, 16 given"]
    fixed, allowed = split_changes(changes)
    assert fixed == changes[2:] and allowed == changes[:2] and moved_folders(allowed) == changes[:2]
