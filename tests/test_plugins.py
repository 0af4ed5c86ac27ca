"""[plugins] modules and the macasr.plugins entry points: your own components, seen by every command."""

from __future__ import annotations

import importlib.metadata
import io
import re
import shutil
import textwrap
import tomllib
from pathlib import Path

import pytest
import soundfile as sf
import torch
from rich.console import Console
from typer.testing import CliRunner

from conftest import noise
from macasr import config as config_module, config_overrides, plugins
from macasr.cli import app
from macasr.errors import CheckpointError, ConfigError
from macasr.plugins import PluginError
from macasr.train import checkpoint
from macasr.train.run import train
from test_engine import run_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugins" / "my_connectors.py"  # the file docs/extending.md shows
runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def _restore_registries():
    """The registries are global: take this module's components out again afterwards, so other
    tests see only the built-in choices (and a later import of the example registers it anew)."""
    import sys

    from macasr.model.connector_config import CONNECTORS, DOWNSAMPLERS
    from macasr.model.encoder_config import ENCODERS

    saved = [(r, set(r._configs)) for r in (CONNECTORS, ENCODERS, DOWNSAMPLERS)]
    yield
    for registry, names in saved:  # built-in classes registered meanwhile stay: their module is imported once
        for name in set(registry._configs) - names:
            registry._configs.pop(name)
            registry._components.pop(name, None)
    plugins._files.clear()
    plugins._contents.clear()
    for name in [n for n in sys.modules if n.startswith("macasr_plugin_") or n == "ep_plugin_abc"]:
        del sys.modules[name]


def plugin_config(tiny_config, folder: Path, modules: str = f'["{EXAMPLE}"]') -> Path:
    """A config file using the example's `gated` connector, on the tiny models."""
    path = folder / "gated.toml"
    path.write_text(textwrap.dedent(f"""\
        [plugins]
        modules = {modules}

        [model.encoder]
        name = "whisper"
        path = "{tiny_config.model.encoder.path}"

        [model.connector]
        name = "gated"
        downsample = 2
        init_gate = 0.25

        [model.llm]
        path = "{tiny_config.model.llm.path}"
        """))
    return path


@pytest.fixture(scope="module")
def run(tiny_config, corpus, tmp_path_factory) -> Path:
    """A run trained 2 steps with the example connector, through the Python API; its last.pt."""
    folder = tmp_path_factory.mktemp("plugin_run")
    loaded = config_module.load(plugin_config(tiny_config, folder))
    cfg = run_config(tiny_config, corpus, folder, **{"model": loaded.model, "plugins": loaded.plugins,
                                                      "train.max_steps": 2, "train.valid_every": 2})
    result = train(cfg, Console(file=io.StringIO(), width=400))
    assert result.steps == 2
    return cfg.run_dir / "last.pt"


def test_config_check_accepts_a_connector_from_a_plugin_file(tiny_config, tmp_path) -> None:
    result = runner.invoke(app, ["config", "check", str(plugin_config(tiny_config, tmp_path))])
    assert result.exit_code == 0, result.output
    cfg = config_module.load(plugin_config(tiny_config, tmp_path))
    assert type(cfg.model.connector).__name__ == "GatedConnectorConfig" and cfg.model.connector.init_gate == 0.25


def test_the_plugin_connector_trains_and_its_checkpoint_names_the_plugin(run) -> None:
    from macasr.model.connectors import CONNECTORS

    stored = torch.load(run, weights_only=True)
    assert stored["config"]["plugins"]["modules"] == [str(EXAMPLE)]
    assert stored["config"]["model"]["connector"]["name"] == "gated"
    assert "connector.gate" in stored["model"]  # the plugin's own parameter was trained and saved
    restored = checkpoint.restore_model(run, device="cpu")
    assert isinstance(restored.model.connector, CONNECTORS.component("gated"))
    torch.testing.assert_close(restored.model.connector.gate.detach(), stored["model"]["connector.gate"])


def test_transcribe_and_eval_load_a_checkpoint_with_a_plugin(run, corpus, tmp_path) -> None:
    audio = tmp_path / "a.wav"
    sf.write(audio, noise(1.0), 16_000)
    result = runner.invoke(app, ["transcribe", str(audio), "--ckpt", str(run)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["eval", "--ckpt", str(run), "--manifest", str(corpus["test"])])
    assert result.exit_code == 0, result.output


def test_a_run_with_a_plugin_connector_resumes(run, tmp_path) -> None:
    """Its stored [model.connector] (gated: no mlp hidden_dim or dropout) is no change from the
    config it was trained with: the run folder's config.toml resumes it (in a copy of the folder)."""
    import shutil

    folder = shutil.copytree(run.parent, tmp_path / run.parent.name)
    result = runner.invoke(app, ["train", str(folder / "config.toml"), "--set", f"train.output_dir={tmp_path}",
                                 "--set", "train.max_steps=3", "--resume"])
    assert result.exit_code == 0, result.output
    assert torch.load(folder / "last.pt", weights_only=True)["step"] == 3


def test_a_checkpoint_whose_plugin_is_missing_names_it_in_one_line(run, tmp_path) -> None:
    data = torch.load(run, weights_only=True)
    data["config"]["plugins"]["modules"] = ["my_missing_connectors"]
    moved = checkpoint.save_checkpoint(tmp_path / "moved.pt", data)
    audio = tmp_path / "a.wav"
    sf.write(audio, noise(0.5), 16_000)
    result = runner.invoke(app, ["transcribe", str(audio), "--ckpt", str(moved)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0] == (f"error: {moved} (stored config): plugin module my_missing_connectors (from [plugins] modules) "
                        "cannot be imported: No module named 'my_missing_connectors'")


def test_a_relative_plugin_file_is_read_from_the_config_folder_and_stored_absolute(tmp_path, monkeypatch) -> None:
    (tmp_path / "plug").mkdir()
    (tmp_path / "plug" / "relative_plugin.py").write_text(textwrap.dedent("""\
        import dataclasses
        from macasr.model.connector_config import CONNECTORS, ConnectorConfig
        from macasr.registry import option

        @dataclasses.dataclass(frozen=True)
        class RelativeConfig(ConnectorConfig):
            name: str = option("from_relative_file", "Which connector to use.")

        CONNECTORS.declare("from_relative_file", RelativeConfig)
        """))
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "x.toml"
    path.write_text('[plugins]\nmodules = ["../plug/relative_plugin.py"]\n[model.connector]\nname = "from_relative_file"\n')
    monkeypatch.chdir(ROOT)  # not the config's folder
    cfg = config_module.load(path)
    assert cfg.model.connector.name == "from_relative_file"
    assert cfg.plugins.modules == [str(tmp_path / "plug" / "relative_plugin.py")]
    assert config_module.load(path).model.connector.name == "from_relative_file"  # imported once: no double registration


def test_a_missing_plugin_module_or_file_is_one_line_naming_it(tmp_path) -> None:
    with pytest.raises(PluginError) as e:
        config_module.loads('[plugins]\nmodules = ["no_such_plugin_xyz"]\n[model.connector]\nname = "nope"\n', "x.toml")
    assert str(e.value) == ("x.toml: plugin module no_such_plugin_xyz (from [plugins] modules) cannot be imported: "
                            "No module named 'no_such_plugin_xyz'")
    path = tmp_path / "c.toml"
    path.write_text('[plugins]\nmodules = ["gone.py"]\n')
    with pytest.raises(ConfigError, match=rf"plugin module gone.py \(from \[plugins\] modules\) \(read from {tmp_path}\) "
                                          rf"cannot be imported: no such file '{tmp_path / 'gone.py'}'"):
        config_module.load(path)


def test_a_plugin_that_raises_is_named_with_its_error(tmp_path) -> None:
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(PluginError, match=r"broken_plugin.py .*cannot be imported: RuntimeError: boom"):
        plugins.import_plugins(["broken_plugin.py"], tmp_path)


def test_an_entry_point_module_is_imported_before_the_config_is_read(tmp_path, monkeypatch) -> None:
    (tmp_path / "ep_plugin_abc.py").write_text(textwrap.dedent("""\
        import dataclasses
        from macasr.model.connector_config import CONNECTORS, ConnectorConfig
        from macasr.registry import option

        @dataclasses.dataclass(frozen=True)
        class EntryConfig(ConnectorConfig):
            name: str = option("from_entry_point", "Which connector to use.")

        CONNECTORS.declare("from_entry_point", EntryConfig)
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    asked = []

    def entry_points(**kwargs):
        asked.append(kwargs)
        return [importlib.metadata.EntryPoint("mine", "ep_plugin_abc", plugins.ENTRY_POINT_GROUP)]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.setattr(plugins, "_entry_points_done", False)
    cfg = config_module.loads('[model.connector]\nname = "from_entry_point"\n')
    assert cfg.model.connector.name == "from_entry_point"
    config_module.loads("")
    assert asked == [{"group": "macasr.plugins"}]  # once per process


def test_a_broken_entry_point_is_named(monkeypatch) -> None:
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: [importlib.metadata.EntryPoint("bad", "no_such_ep_module", plugins.ENTRY_POINT_GROUP)])
    monkeypatch.setattr(plugins, "_entry_points_done", False)
    with pytest.raises(PluginError, match=r"^plugin bad = 'no_such_ep_module' \(entry point group macasr.plugins\) "
                                          r"cannot be imported: No module named 'no_such_ep_module'$"):
        config_module.loads("")
    monkeypatch.setattr(plugins, "_entry_points_done", True)


def test_docs_show_the_tested_example_file() -> None:
    docs = (ROOT / "docs" / "extending.md").read_text()
    assert EXAMPLE.read_text() in docs


def test_a_plugin_that_raises_names_the_file_and_line_it_raised_at(tmp_path, monkeypatch) -> None:
    """The plugin's own last line in the traceback, not the library frame below it."""
    plugin = tmp_path / "raising_plugin.py"
    plugin.write_text("import json\n\n\ndef load():\n    json.loads('{')\n\n\nload()\n")
    with pytest.raises(PluginError) as e:
        plugins.import_plugins([str(plugin)], tmp_path)
    assert str(e.value).startswith(f"plugin module {plugin} (from [plugins] modules) cannot be imported: JSONDecodeError: ")
    assert str(e.value).endswith(f" (raised at {plugin}:5)") and "\n" not in str(e.value)
    package = tmp_path / "raising_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from raising_pkg import inner\n")
    (package / "inner.py").write_text("x = 1\nraise RuntimeError('boom in plugin')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=re.escape(f"cannot be imported: RuntimeError: boom in plugin (raised at {package / 'inner.py'}:2)")):
        plugins.import_plugins(["raising_pkg"])


def test_an_exported_bundle_holds_its_plugin_file_and_names_a_plugin_module(run, tmp_path, monkeypatch) -> None:
    """The bundle loads after the plugin file it was trained with is gone; a module name is kept and
    the export says it must be installed; a broken bundle config names its file once."""
    import json

    from macasr.infer import bundle

    plugin = tmp_path / "plug" / "my_connectors.py"
    plugin.parent.mkdir()
    plugin.write_bytes(EXAMPLE.read_bytes())
    (tmp_path / "f3_installed_plugin.py").write_text("INSTALLED = True\n")  # stands for an installed package
    monkeypatch.syspath_prepend(str(tmp_path))
    data = torch.load(run, weights_only=True)
    data["config"]["plugins"]["modules"] = [str(plugin), "f3_installed_plugin"]
    ckpt = checkpoint.save_checkpoint(tmp_path / "run" / "best.pt", data)
    out = tmp_path / "bundle"
    result = runner.invoke(app, ["export", str(ckpt), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert " ".join(result.stderr.split()) == ("note: plugin module f3_installed_plugin ([plugins] modules) is not in the bundle: "
                                               "install the package that provides it wherever the bundle is loaded")
    assert (out / "plugins" / "my_connectors.py").read_bytes() == EXAMPLE.read_bytes()
    text = (out / bundle.CONFIG).read_text()
    assert 'modules = ["plugins/my_connectors.py", "f3_installed_plugin"]' in text
    assert json.loads((out / bundle.MANIFEST).read_text())["plugins"] == {
        "files": {"plugins/my_connectors.py": str(plugin)}, "modules": ["f3_installed_plugin"]}
    card = " ".join((out / "README.md").read_text().split())
    assert "`plugins/my_connectors.py`" in card and "needs the plugin module `f3_installed_plugin` installed" in card
    plugin.unlink()  # the original is gone: the bundle's copy is read
    restored = checkpoint.restore_model(out, device="cpu")
    assert restored.config.plugins.modules == [str(out / "plugins" / "my_connectors.py"), "f3_installed_plugin"]
    torch.testing.assert_close(restored.model.connector.gate.detach(), data["model"]["connector.gate"])
    broken = shutil.copytree(out, tmp_path / "incomplete")  # a copy of the bundle without its plugin file
    (broken / "plugins" / "my_connectors.py").unlink()
    with pytest.raises(PluginError) as e:
        checkpoint.restore_model(broken, device="cpu")
    assert str(e.value).startswith(f"{broken / bundle.CONFIG}: plugin module plugins/my_connectors.py (from [plugins] modules)")
    assert str(e.value).count("config.toml") == 1 and "no such file" in str(e.value)
    (out / bundle.CONFIG).write_text(text.replace("[train]\n", "[train]\nnot_a_key = 1\n", 1))
    with pytest.raises(CheckpointError) as e:
        checkpoint.restore_model(out, device="cpu")
    assert str(e.value).startswith(f"{out / bundle.CONFIG}:") and str(e.value).count("config.toml") == 1
    assert "not_a_key" in str(e.value) and str(e.value).endswith("(the bundle's config is invalid)")


def _renamed_example(folder: Path, name: str) -> Path:
    """The example file registering its connector under `name`: a name no earlier test registered."""
    path = folder / f"{name}_connectors.py"
    path.write_text(EXAMPLE.read_text().replace('"gated"', f'"{name}"'))
    return path


def test_set_switches_to_a_plugin_connector_named_in_the_same_command(tmp_path) -> None:
    plugin = _renamed_example(tmp_path, "switched")
    result = runner.invoke(app, ["config", "init", str(tmp_path / "c.toml"), "--set", f'plugins.modules=["{plugin}"]',
                                 "--set", "model.connector.name=switched"])
    assert result.exit_code == 0, result.output
    connector = tomllib.loads((tmp_path / "c.toml").read_text())["model"]["connector"]
    assert connector["name"] == "switched" and "hidden_dim" not in connector and "dropout" not in connector  # the mlp's keys


def test_set_switches_to_a_connector_of_the_files_plugins(tiny_config, tmp_path) -> None:
    plugin = _renamed_example(tmp_path, "filed")
    path = plugin_config(tiny_config, tmp_path, f'["{plugin}"]')
    path.write_text(path.read_text().replace('name = "gated"', 'name = "mlp"\nhidden_dim = 32').replace("init_gate = 0.25\n", ""))
    cfg = config_overrides.load(path, ["model.connector.name=filed"])
    assert cfg.model.connector.name == "filed"
    result = runner.invoke(app, ["config", "check", str(path), "--set", "model.connector.name=filed"])
    assert result.exit_code == 0, result.output
