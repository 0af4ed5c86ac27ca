"""Downsamplers come from a registry: the built-in ones keep their checkpoints' parameter names,
an unknown name is one line listing the registered ones, and a plugin's downsampler is listed,
trains, is checkpointed and restored, and is counted by `macasr plan`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn
from typer.testing import CliRunner

from macasr import config as config_module
from macasr.cli import app
from macasr.errors import ConfigError
from macasr.model.build import build_model, parameter_counts
from macasr.model.connectors import CONNECTORS, MLPConnectorConfig
from macasr.model.downsamplers import DOWNSAMPLERS
from macasr.train import checkpoint
from macasr.train.run import train
from test_engine import run_config
from test_plugins import ROOT, _restore_registries  # noqa: F401 - the fixture takes the example's downsampler out again

EXAMPLE = ROOT / "examples" / "plugins" / "my_downsamplers.py"  # the file docs/extending.md shows
runner = CliRunner()


def test_conv1d_loads_the_parameters_of_the_nn_conv1d_it_replaces() -> None:
    """Before the registry a connector held `downsampler = nn.Conv1d(D, D, k, stride=k)`: its
    checkpoints load unchanged and give the same frames."""
    k, dim = 3, 8
    connector = CONNECTORS.build(MLPConnectorConfig(downsample=k, downsampler="conv1d", hidden_dim=16), dim, 12)
    old = nn.Conv1d(dim, dim, k, stride=k)
    assert list(connector.state_dict())[:2] == ["downsampler.weight", "downsampler.bias"]
    connector.downsampler.load_state_dict(old.state_dict(), strict=True)
    frames, lengths = torch.randn(2, 7, dim), torch.tensor([7, 7])
    x, short = connector.downsample(frames, lengths)
    expected = old(nn.functional.pad(frames, (0, 0, 0, 2)).transpose(1, 2)).transpose(1, 2)  # 7 frames → 9 → 3
    torch.testing.assert_close(x, expected)
    assert short.tolist() == [3, 3]
    stack = CONNECTORS.build(MLPConnectorConfig(downsample=k, downsampler="stack", hidden_dim=16), dim, 12)
    assert not [n for n in stack.state_dict() if n.startswith("downsampler.")]  # no parameters, as before


def test_an_unknown_downsampler_is_one_line_listing_the_registered_ones() -> None:
    for value, shown in (('"avg"', "'avg'"), ("3", "3")):
        with pytest.raises(ConfigError) as e:
            config_module.loads(f'[model.connector]\nname = "mlp"\ndownsampler = {value}\n', "cfg.toml")
        assert str(e.value) == f"cfg.toml:3: `model.connector.downsampler`: unknown downsampler {shown}; choose one of: conv1d, stack"


def plugin_config(tiny_config, folder: Path, downsampler: str = "pool") -> Path:
    """A config file using the example's `pool` downsampler, on the tiny models."""
    cfg = config_module.replace(tiny_config, **{"plugins.modules": [str(EXAMPLE)], "model.connector.downsampler": downsampler})
    return config_module.dump(cfg, folder / "pool.toml")


def test_config_commands_list_and_accept_a_plugins_downsampler(tiny_config, tmp_path) -> None:
    path = plugin_config(tiny_config, tmp_path)
    result = runner.invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert config_module.load(path).model.connector.downsampler == "pool"
    for command in (["config", "init"], ["config", "docs"]):  # the registered choices now include the plugin's
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
        assert "Choices: conv1d, pool, stack." in result.stdout, command
    bad = plugin_config(tiny_config, tmp_path, downsampler="pol")
    result = runner.invoke(app, ["config", "check", str(bad)])
    assert result.exit_code == 1
    assert "`model.connector.downsampler`: unknown downsampler 'pol'; choose one of: conv1d, pool, stack" in result.stderr


def test_a_plugins_downsampler_trains_is_checkpointed_and_restored(tiny_config, corpus, tmp_path) -> None:
    cfg = run_config(config_module.load(plugin_config(tiny_config, tmp_path)), corpus, tmp_path,
                     **{"train.max_steps": 2, "train.valid_every": 2})
    assert train(cfg, Console(file=io.StringIO(), width=400)).steps == 2
    stored = torch.load(cfg.run_dir / "last.pt", weights_only=True)
    assert stored["config"]["plugins"]["modules"] == [str(EXAMPLE)]  # the checkpoint names the plugin
    assert stored["config"]["model"]["connector"]["downsampler"] == "pool"
    logits = stored["model"]["connector.downsampler.logits"]
    assert not torch.equal(logits, torch.zeros(cfg.model.connector.downsample))  # it trained (it starts at 0)
    restored = checkpoint.restore_model(cfg.run_dir / "last.pt", device="cpu")
    assert isinstance(restored.model.connector.downsampler, DOWNSAMPLERS.component("pool"))
    torch.testing.assert_close(restored.model.connector.downsampler.logits.detach(), logits)


def test_plan_counts_a_plugins_downsampler(tiny_config, tmp_path) -> None:
    path = plugin_config(tiny_config, tmp_path)
    result = runner.invoke(app, ["plan", str(path), "--json"])
    assert result.exit_code == 0, result.output
    model = build_model(config_module.load(path))
    assert "downsampler.logits" in dict(model.connector.named_parameters())
    assert json.loads(result.stdout)["parts"]["connector"]["params"] == parameter_counts(model)["connector"].total


def test_docs_show_the_tested_example_file() -> None:
    assert EXAMPLE.read_text() in (ROOT / "docs" / "extending.md").read_text()
