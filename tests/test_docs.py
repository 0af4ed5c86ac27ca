"""Docs that are generated must match the code; the README keeps its two set-up commands first."""

from __future__ import annotations

from pathlib import Path

from macasr import config as config_module

ROOT = Path(__file__).parents[1]


def test_config_reference_is_current() -> None:
    expected = config_module.reference_markdown()
    assert (ROOT / "docs" / "config.md").read_text() == expected, "run: macasr config docs > docs/config.md"


def test_readme_opens_with_the_two_setup_commands() -> None:
    text = (ROOT / "README.md").read_text()
    block = text.split("```")[1].strip().splitlines()
    commands = [line.split("#")[0].strip() for line in block[1:] if line.strip()]
    assert commands == ["make demo", "make test"]
