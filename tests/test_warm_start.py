"""[train] init_from: a new run starts from another run's weights, with a fresh optimizer and schedule."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from rich.console import Console

from macasr import config as config_module, testing
from macasr.errors import CheckpointError
from macasr.model.build import build_model
from macasr.train import checkpoint
from macasr.train.engine import Trainer
from macasr.train.run import train, training_sets
from macasr.train.warm_start import warm_start
from test_engine import run_config, weights


@pytest.fixture(scope="module")
def source(tiny_config, tmp_path_factory) -> Path:
    """A best.pt of another run: trained (perturbed) weights, step 7."""
    model = build_model(tiny_config)
    testing.perturb_trainable(model)
    path = tmp_path_factory.mktemp("a") / "best.pt"
    return checkpoint.save_checkpoint(path, checkpoint.model_payload(model, tiny_config, step=7))


def stored_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def assert_weights(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    got = weights(model)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


def test_init_from_loads_the_weights_and_the_optimizer_starts_fresh(tiny_config, corpus, source, tmp_path) -> None:
    cfg = run_config(tiny_config, corpus, tmp_path, **{"train.init_from": str(source)})
    model = build_model(cfg)
    assert any(not torch.equal(p, stored_weights(source)[n]) for n, p in weights(model).items())  # a fresh model differs
    line = warm_start(model, cfg)
    assert line.startswith(f"warm start: weights from {source} (step 7)")
    train_set, valid_set = training_sets(cfg)
    trainer = Trainer(cfg, model, train_set, valid_set, torch.device("cpu"), "fp32", Console(file=io.StringIO()))
    assert_weights(trainer.model, stored_weights(source))  # the first step starts from them
    assert trainer.optimizer.state_dict()["state"] == {}  # no moments carried over
    assert trainer.step == 0 and trainer.scheduler.last_epoch == 0


def test_a_run_prints_its_warm_start_and_trains_from_it(tiny_config, corpus, source, tmp_path) -> None:
    cfg = run_config(tiny_config, corpus, tmp_path, **{"train.init_from": str(source), "train.lr": 1e-9})
    out = io.StringIO()
    result = train(cfg, Console(file=out, width=400))
    assert result.steps == 1
    assert f"warm start: weights from {source} (step 7)" in out.getvalue()
    after = torch.load(cfg.run_dir / "last.pt", weights_only=True)
    assert after["step"] == 1 and "init_from" in after["config"]["train"]
    for name, tensor in stored_weights(source).items():  # lr 1e-9: one step barely moves the warm-started weights
        torch.testing.assert_close(after["model"][name], tensor, rtol=0, atol=1e-6, msg=name)


def test_a_resumed_run_ignores_init_from(tiny_config, corpus, source, tmp_path) -> None:
    cfg = run_config(tiny_config, corpus, tmp_path, **{"train.init_from": str(source)})
    model = build_model(cfg)
    before = weights(model)
    assert "ignored" in warm_start(model, cfg, resuming=True)
    assert_weights(model, before)


def test_no_init_from_changes_nothing(tiny_config) -> None:
    model = build_model(tiny_config)
    before = weights(model)
    assert warm_start(model, tiny_config) is None
    assert_weights(model, before)


def test_a_checkpoint_of_another_shape_is_refused_naming_the_weight(tiny_config, source, tmp_path) -> None:
    cfg = config_module.replace(tiny_config, **{"model.connector.hidden_dim": 32, "train.init_from": str(source)})
    with pytest.raises(CheckpointError) as error:
        warm_start(build_model(cfg), cfg)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"[train] init_from {source}: weight connector.")
    assert "in the checkpoint but [32," in message and "built from this run's config" in message


LORA = {"model.llm.lora.enabled": True, "model.llm.lora.r": 4}


@pytest.fixture(scope="module")
def lora_source(tiny_config, tmp_path_factory) -> Path:
    """A best.pt of a run that trained the connector and LoRA adapters on the LLM (B no longer zero)."""
    cfg = config_module.replace(tiny_config, **LORA)
    model = build_model(cfg)
    testing.perturb_trainable(model)
    path = tmp_path_factory.mktemp("lora") / "best.pt"
    return checkpoint.save_checkpoint(path, checkpoint.model_payload(model, cfg, step=9))


def _as_bundle(path: Path, kind: str, tmp_path: Path) -> Path:
    from macasr.infer.export import export_bundle

    return path if kind == "checkpoint" else export_bundle(path, tmp_path / "bundle")


@pytest.mark.parametrize("kind", ["checkpoint", "bundle"])
def test_a_connector_only_checkpoint_starts_a_lora_run(tiny_config, source, tmp_path, kind) -> None:
    """Stage 2 of the two-stage recipe: the connector comes from stage 1, the LoRA adapters start
    as peft initialises them (B = 0), and the start-up line names both."""
    start = _as_bundle(source, kind, tmp_path)
    cfg = config_module.replace(tiny_config, **LORA, **{"train.init_from": str(start)})
    model = build_model(cfg)
    fresh = {n: t for n, t in weights(model).items() if ".lora_" in n}
    assert fresh and any(".lora_B." in n for n in fresh)
    line = warm_start(model, cfg)
    assert line.startswith(f"warm start: weights from {start} (step 7): loaded connector; start fresh: llm LoRA adapters "
                           "(peft's initialisation, B = 0")
    assert "model.llm.lora" not in line  # turning LoRA on is the point of stage 2, not a difference worth a note
    after = weights(model)
    assert_weights(model, stored_weights(source) | fresh)
    assert all(not after[n].any() for n in after if ".lora_B." in n)


def test_a_checkpoint_with_lora_is_refused_by_a_run_without_it(tiny_config, lora_source, tmp_path) -> None:
    """Dropping trained adapters would start from another model than the checkpoint's: refused, saying what to enable."""
    for start in (lora_source, _as_bundle(lora_source, "bundle", tmp_path)):
        cfg = config_module.replace(tiny_config, **{"train.init_from": str(start)})
        with pytest.raises(CheckpointError) as error:
            warm_start(build_model(cfg), cfg)
        message = str(error.value)
        assert "\n" not in message
        assert message.startswith(f"[train] init_from {start}: holds trained weights of llm LoRA adapters, which this run "
                                  "does not train")
        assert "enable [model.llm.lora] with the same rank and modules (r = 4, target_modules = [" in message


def test_lora_of_another_rank_is_refused_naming_the_weight(tiny_config, lora_source) -> None:
    cfg = config_module.replace(tiny_config, **{**LORA, "model.llm.lora.r": 8, "train.init_from": str(lora_source)})
    with pytest.raises(CheckpointError, match=r"^\[train\] init_from .*best\.pt: weight llm\..*\.lora_A\.default\.weight "
                                              r"has shape \[4, \d+\] in the checkpoint but \[8, \d+\]"):
        warm_start(build_model(cfg), cfg)


def test_lora_on_other_modules_is_refused_naming_them(tiny_config, lora_source) -> None:
    cfg = config_module.replace(tiny_config, **LORA, **{"model.llm.lora.target_modules": ["q_proj"], "train.init_from": str(lora_source)})
    with pytest.raises(CheckpointError, match=r"^\[train\] init_from .*best\.pt: weights were saved for a different set of "
                                              r"trained parts \(it holds weights the model does not train: \d+ under llm\. \(e\.g\. llm\."):
        warm_start(build_model(cfg), cfg)


def test_a_checkpoint_without_trained_weights_is_refused(tiny_config, tmp_path) -> None:
    """Nothing loaded and everything fresh would be a cold start that calls itself a warm one."""
    path = checkpoint.save_checkpoint(tmp_path / "empty.pt", {"config": config_module.to_dict(tiny_config), "model": {}, "step": 3})
    cfg = config_module.replace(tiny_config, **{"train.init_from": str(path)})
    with pytest.raises(CheckpointError, match=rf"^\[train\] init_from {path}: holds no trained weights$"):
        warm_start(build_model(cfg), cfg)


def test_a_resumed_stage_2_run_continues_from_its_last_pt(tiny_config, corpus, source, tmp_path, monkeypatch) -> None:
    """A stage-2 run (LoRA, init_from a connector-only best.pt) resumed after a step starts the
    resume from its own last.pt's weights, not from the warm start again."""
    cfg = run_config(tiny_config, corpus, tmp_path, **LORA, **{"train.init_from": str(source), "train.lr": 1e-2})
    first = io.StringIO()
    train(cfg, Console(file=first, width=400))
    assert "loaded connector; start fresh: llm LoRA adapters" in first.getvalue()
    last = stored_weights(cfg.run_dir / "last.pt")
    assert any(last[n].any() for n in last if ".lora_B." in n)  # the step moved the adapters
    started: dict[str, torch.Tensor] = {}
    fit = Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda self: (started.update(weights(self.model)), fit(self))[1])
    out = io.StringIO()
    train(config_module.replace(cfg, **{"train.max_steps": 2}), Console(file=out, width=400), resume=True)
    assert f"init_from {source} ignored" in out.getvalue() and "warm start:" not in out.getvalue()
    assert started.keys() == last.keys()
    for name, tensor in last.items():
        torch.testing.assert_close(started[name], tensor, rtol=0, atol=0, msg=name)


def test_a_missing_file_and_a_folder_without_a_bundle_are_refused(tiny_config, tmp_path) -> None:
    for path, reason in ((tmp_path / "nope.pt", "no such checkpoint file"), (tmp_path, "not a macasr bundle")):
        cfg = config_module.replace(tiny_config, **{"train.init_from": str(path)})
        with pytest.raises(CheckpointError, match=rf"^\[train\] init_from {path}: {reason}"):
            warm_start(build_model(cfg), cfg)


def test_an_export_bundle_is_a_warm_start_too(tiny_config, source, tmp_path) -> None:
    from macasr.infer.export import export_bundle

    folder = export_bundle(source, tmp_path / "bundle")
    cfg = config_module.replace(tiny_config, **{"train.init_from": str(folder)})
    model = build_model(cfg)
    assert warm_start(model, cfg).startswith(f"warm start: weights from {folder} (step 7)")
    assert_weights(model, stored_weights(source))


def test_init_from_is_a_config_key_with_a_path_made_absolute(tmp_path, monkeypatch) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "best.pt").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    cfg = config_module.loads('[train]\ninit_from = "a/best.pt"\n')
    assert config_module.resolve_paths(cfg).train.init_from == str(tmp_path / "a" / "best.pt")


@pytest.fixture(scope="module")
def linear_source(tiny_config, tmp_path_factory) -> Path:
    """A best.pt of a run with a linear connector."""
    from macasr.model.connector_config import LinearConnectorConfig

    cfg = config_module.replace(tiny_config, **{"model.connector": LinearConnectorConfig(downsample=2)})
    model = build_model(cfg)
    testing.perturb_trainable(model)
    return checkpoint.save_checkpoint(tmp_path_factory.mktemp("linear") / "best.pt", checkpoint.model_payload(model, cfg, step=5))


def test_a_linear_checkpoint_starts_a_linear_run_without_a_false_difference(tiny_config, linear_source) -> None:
    """The stored linear table has no mlp hidden_dim/dropout; they are no difference to note."""
    from macasr.model.connector_config import LinearConnectorConfig

    cfg = config_module.replace(tiny_config, **{"model.connector": LinearConnectorConfig(downsample=2), "train.init_from": str(linear_source)})
    model = build_model(cfg)
    line = warm_start(model, cfg)
    assert line == (f"warm start: weights from {linear_source} (step 5): loaded connector; optimizer, schedule and step count start fresh")
    assert_weights(model, stored_weights(linear_source))


def test_a_checkpoint_of_another_connector_says_so_first(tiny_config, linear_source) -> None:
    cfg = config_module.replace(tiny_config, **{"train.init_from": str(linear_source)})  # an mlp connector
    with pytest.raises(CheckpointError) as error:
        warm_start(build_model(cfg), cfg)
    assert str(error.value) == (
        f"[train] init_from {linear_source}: the checkpoint's connector is 'linear', this run's is 'mlp': weights trained for "
        "one connector do not fit another; to start from them, set [model.connector] name = \"linear\" (and that table's "
        "other keys as in the checkpoint's config), or start without init_from")


def test_an_llm_of_another_width_is_named_before_the_weight_that_does_not_fit(tiny_config, source, tmp_path) -> None:
    from conftest import SENTENCES

    wider = testing.save_tiny_qwen3(tmp_path / "wider", testing.train_tokenizer(SENTENCES * 5, vocab_size=150), hidden=48)
    cfg = config_module.replace(tiny_config, **{"model.llm.path": str(wider), "train.init_from": str(source)})
    with pytest.raises(CheckpointError) as error:
        warm_start(build_model(cfg), cfg)
    assert str(error.value).startswith(f"[train] init_from {source}: the checkpoint's LLM is {tiny_config.model.llm.path!r}, "
                                       f"this run's is {str(wider)!r} (weight connector.")
    assert "in the checkpoint but [48, " in str(error.value)


def test_a_missing_relative_init_from_names_the_folder_it_looked_in(tiny_config, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = config_module.resolve_paths(config_module.replace(tiny_config, **{"train.init_from": "runs/a/best.pt"}))
    assert cfg.train.init_from == "runs/a/best.pt"  # a path that does not exist stays as written
    with pytest.raises(CheckpointError) as error:
        warm_start(build_model(cfg), cfg)
    assert str(error.value) == f"[train] init_from runs/a/best.pt: no such checkpoint file (looked for {tmp_path / 'runs/a/best.pt'})"
