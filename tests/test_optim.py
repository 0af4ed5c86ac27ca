"""`[train] optimizer = "muon"`: Muon for hidden-layer matrices, AdamW for the rest, one schedule."""

from __future__ import annotations

import json

import pytest
import torch

from macasr import config as config_module
from macasr.errors import CheckpointError, ConfigError
from macasr.model.build import build_model
from macasr.train.optim import MuonWithAdamW, build_optimizer, is_muon_weight
from macasr.train.run import train
from macasr.train.schedule import build_scheduler
from test_model import make_batch


def groups_of(optimizer: torch.optim.Optimizer) -> dict[str, set[int]]:
    """{part name: ids of the parameters it updates}."""
    parts = optimizer.parts if isinstance(optimizer, MuonWithAdamW) else {"adamw": optimizer}
    return {name: {id(p) for g in part.param_groups for p in g["params"]} for name, part in parts.items()}


def test_muon_takes_hidden_matrices_and_adamw_the_rest(tiny_config) -> None:
    cfg = config_module.replace(tiny_config, **{"model.llm.train": True, "model.encoder.train": True})
    model = build_model(cfg)
    optimizer = build_optimizer(model, "muon", 1e-3, 0.01, muon_lr=0.02)
    parts = groups_of(optimizer)
    named = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    muon = {named[i] for i in parts["muon"]}
    adamw = {named[i] for i in parts["adamw"]}
    assert muon | adamw == set(named.values()) and not muon & adamw  # every trainable weight exactly once
    assert any("connector" in n for n in muon) and any("q_proj" in n for n in muon)
    assert all(model.get_parameter(n).ndim == 2 for n in muon)
    assert any("embed_tokens" in n for n in adamw)  # token table
    assert any(model.get_parameter(n).ndim == 3 for n in adamw)  # Whisper's conv kernels
    assert any(model.get_parameter(n).ndim == 1 for n in adamw)  # biases and norm gains
    assert [g["lr"] for g in optimizer.parts["muon"].param_groups] == [0.02]
    assert {g["lr"] for g in optimizer.parts["adamw"].param_groups} == {1e-3}


def test_frozen_weights_are_in_no_group(tiny_config) -> None:
    model = build_model(tiny_config)  # encoder and LLM frozen: the connector alone trains
    ids = set().union(*groups_of(build_optimizer(model, "muon", 1e-3, 0.0)).values())
    assert ids == {id(p) for p in model.connector.parameters()}


def test_schedule_scales_both_rates(tiny_config) -> None:
    optimizer = build_optimizer(build_model(tiny_config), "muon", 1e-3, 0.0, muon_lr=0.02)
    scheduler = build_scheduler(optimizer, warmup_steps=4, max_steps=10, min_lr_ratio=0.0)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert [g["lr"] for g in optimizer.parts["muon"].param_groups] == pytest.approx([0.02 * 3 / 4])
    assert {round(g["lr"], 12) for g in optimizer.parts["adamw"].param_groups} == {round(1e-3 * 3 / 4, 12)}


def test_muon_lowers_the_loss(tiny_config) -> None:
    model = build_model(config_module.replace(tiny_config, **{"model.llm.train": True})).train()
    batch = make_batch(model)
    optimizer = build_optimizer(model, "muon", 1e-3, 0.0, muon_lr=0.02)
    losses = []
    for _ in range(10):
        loss = model(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.9 * losses[0], losses


def test_unknown_optimizer_is_refused_in_the_config() -> None:
    with pytest.raises(ConfigError, match=r"train.optimizer.*'adamw', 'muon'.*sgd"):
        config_module.loads('[train]\noptimizer = "sgd"\n')


def test_muon_run_resumes_and_refuses_an_adamw_state(tiny_config, corpus, tmp_path) -> None:
    """A Muon run's last.pt holds both optimizers' state and resumes; an AdamW run does not resume as Muon."""
    cfg = config_module.replace(tiny_config, **{
        "data.train": [str(corpus["train"])], "train.output_dir": str(tmp_path), "train.name": "muon",
        "train.optimizer": "muon", "train.warmup_steps": 0, "train.max_steps": 2, "train.valid_every": 2,
        "train.min_lr_ratio": 0.5,
    })
    train(cfg)
    logged = [json.loads(line) for line in (tmp_path / "muon" / "metrics.jsonl").read_text().splitlines()]
    rates = [(r["lr"], r["muon_lr"]) for r in logged if "loss" in r]
    assert rates and all(lr > 0 and lr == pytest.approx(cfg.train.lr * 0.5) for lr, _ in rates)  # the AdamW rate, at the floor
    assert all(muon == pytest.approx(cfg.train.muon_lr * 0.5) for _, muon in rates)
    last = torch.load(tmp_path / "muon" / "last.pt", weights_only=True)
    assert set(last["optimizer"]) == {"muon", "adamw"} and last["optimizer"]["muon"]["state"]  # momentum saved
    result = train(config_module.replace(cfg, **{"train.max_steps": 3}), resume=True)
    assert result.steps == 3
    adamw = config_module.replace(cfg, **{"train.name": "adamw", "train.optimizer": "adamw"})
    train(adamw)
    with pytest.raises(CheckpointError, match=r"train.optimizer: 'adamw' in the checkpoint, 'muon' given"):
        train(config_module.replace(adamw, **{"train.max_steps": 3, "train.optimizer": "muon"}), resume=True)


def test_an_adamw_state_does_not_load_into_muon(tiny_config) -> None:
    model = build_model(tiny_config)
    state = build_optimizer(model, "adamw", 1e-3, 0.0).state_dict()
    with pytest.raises(ValueError, match=r"holds \['param_groups', 'state'\], not \['adamw', 'muon'\]"):
        build_optimizer(model, "muon", 1e-3, 0.0).load_state_dict(state)
