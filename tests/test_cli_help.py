"""Help texts are shown as written: `[eval]` stays, and flags show no value placeholder."""

from __future__ import annotations

import re

import click
import pytest
import typer
from typer.testing import CliRunner

from macasr.cli import app

runner = CliRunner()
WIDE = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}


def _commands(group: click.Command, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    """Every command and group of the app, with the words that reach it."""
    found = [(path, group)]
    for name, sub in getattr(group, "commands", {}).items():
        found += _commands(sub, (*path, name))
    return found


COMMANDS = _commands(typer.main.get_command(app))


def _help(path: tuple[str, ...]) -> str:
    result = runner.invoke(app, [*path, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return result.output


def test_table_names_in_help_texts_are_shown() -> None:
    assert "A dataset named in [datasets.*]" in _help(("eval",))


def test_a_flag_shows_no_value_placeholder() -> None:
    line = next(line for line in _help(("train",)).splitlines() if line.lstrip().startswith("--resume"))
    assert "<bool>" not in line and "Continue from the run folder's last.pt." in line


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(path) or "macasr" for path, _ in COMMANDS])
def test_every_help_text_survives_in_every_command(path: tuple[str, ...], command: click.Command) -> None:
    """Options added later are covered too: each bracketed word of a help text is in --help."""
    shown = _help(path)
    assert "<bool>" not in shown
    for param in command.params:
        for word in re.findall(r"\[[^\]\s]+\]", getattr(param, "help", None) or ""):
            assert word in shown, (param.name, word)
    for word in re.findall(r"\[[^\]\s]+\]", command.help or ""):
        assert word in shown, word
