"""Commands that need no model start without torch, transformers or lhotse (lazy imports).

Each case runs in a fresh interpreter, since this test process has long imported them all. The
rule the CLI keeps (docs/performance.md, "CLI start-up"): cli/*.py and everything `macasr.config`
imports stay free of these modules at import time; a command imports them inside its function.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "lhotse", "peft", "silero_vad", "numpy", "soundfile")
# Runs the CLI with the given words (exit status kept), then prints which heavy modules it imported.
RUN = """
import json, sys
from macasr.cli import main
heavy = json.loads(sys.argv[2])
sys.argv = ["macasr", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit as e:
    status = e.code or 0
else:
    status = 0
print("IMPORTED=" + json.dumps({"status": status, "heavy": [m for m in heavy if m in sys.modules]}))
"""
# Shows the help of every command and group the app has, in one process.
EVERY_HELP = """
import json, sys
import typer
from macasr.cli import app

def paths(group, path=()):
    yield path
    for name, sub in getattr(group, "commands", {}).items():
        yield from paths(sub, (*path, name))

failed = []
for path in paths(typer.main.get_command(app)):
    try:
        app([*path, "--help"], standalone_mode=False)
    except SystemExit as e:
        if e.code:
            failed.append(path)
print("IMPORTED=" + json.dumps({"status": len(failed), "heavy": [m for m in json.loads(sys.argv[2]) if m in sys.modules]}))
"""


def imported(code: str, words: list[str]) -> dict:
    """Run `code` in a fresh interpreter from the repository root (so this checkout's macasr is
    imported); its exit status and the heavy modules it left in sys.modules."""
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(words), json.dumps(HEAVY)], cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("IMPORTED="))
    return json.loads(line.removeprefix("IMPORTED="))


def test_help_imports_no_heavy_module() -> None:
    assert imported(RUN, ["--help"]) == {"status": 0, "heavy": []}


def test_config_init_and_check_import_no_heavy_module(tmp_path: Path) -> None:
    out = tmp_path / "asr.toml"
    assert imported(RUN, ["config", "init", str(out)]) == {"status": 0, "heavy": []}
    assert "[model.connector]" in out.read_text()  # it did write the config
    assert imported(RUN, ["config", "check", str(out)]) == {"status": 0, "heavy": []}


def test_every_commands_help_imports_no_heavy_module() -> None:
    assert imported(EVERY_HELP, []) == {"status": 0, "heavy": []}


@pytest.mark.parametrize("registry, name, module", [("CONNECTORS", "qformer", "macasr.model.connectors"),
                                                    ("ENCODERS", "wavlm", "macasr.model.encoders")])
def test_a_registry_imports_its_components_on_first_use(registry, name, module) -> None:
    """The config names every component without importing it; asking for one imports its module."""
    code = f"""
import json, sys
from macasr import config
assert "torch" not in sys.modules
assert "{name}" in config.{registry}.names() and config.{registry}.config_type("{name}").__name__
cls = config.{registry}.component("{name}")
print("IMPORTED=" + json.dumps({{"status": cls.__module__, "heavy": ["torch" in sys.modules]}}))
"""
    assert imported(code, []) == {"status": module, "heavy": [True]}


def test_a_registry_declares_configs_apart_from_classes() -> None:
    from macasr.registry import ComponentConfig, Registry

    class Base(ComponentConfig):
        pass

    class Other(Base):
        pass

    registry: Registry = Registry("widget", Base, module="json")  # a module that registers nothing
    registry.declare("plain", Base)
    assert registry.names() == ["plain"] and registry.config_type("plain") is Base
    with pytest.raises(KeyError, match="'plain' has a config but no registered class"):
        registry.component("plain")
    with pytest.raises(ValueError, match="already declared with Base"):
        registry.register("plain", Other)
    cls = registry.register("plain", Base)(type("Plain", (), {}))
    assert registry.component("plain") is cls
    with pytest.raises(ValueError, match="already registered"):
        registry.register("plain", Base)(type("Again", (), {}))
    with pytest.raises(KeyError, match="unknown widget 'nope'; choose one of: plain"):
        registry.config_type("nope")
