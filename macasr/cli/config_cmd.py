"""`macasr config init|check`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from macasr import config as config_module, config_overrides, plugins
from macasr.cli._common import SetOpt, console, err_console, fail, handle_errors, typer_app
from macasr.errors import ConfigError

app = typer_app(no_args_is_help=True, help="Write a complete, commented config, or check one.")


@app.command("init")
@handle_errors
def init(
    path: Annotated[Path | None, typer.Argument(help="Where to write (default: print to stdout).", show_default=False)] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="Start from a preset in configs/ (e.g. demo).", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    sets: SetOpt = None,
) -> None:
    """Write a config with every field, its value and its help text as a comment."""
    plugins.import_entry_points()  # installed plugins' components are listed among the choices
    cfg = config_module.load_preset(preset) if preset else config_module.Config()
    cfg = config_overrides.override(cfg, sets, f"preset {preset}" if preset else "the defaults")
    if path is None:
        typer.echo(config_module.dumps(cfg))
        return
    if path.exists() and not force:
        raise fail(f"{path} exists; pass --force to overwrite it")
    config_module.dump(cfg, path)
    console.print(f"wrote {path}" + (f" (preset {preset})" if preset else ""))


@app.command("check")
@handle_errors
def check(config: Annotated[Path, typer.Argument(help="TOML config to validate.")], sets: SetOpt = None) -> None:
    """Validate a config and the files it names, and report every problem at once."""
    report = config_module.check(config, sets)
    for note in report.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    if report.problems:
        raise ConfigError(report.problems)
    console.print(f"[green]ok[/] {escape(str(config))}")


@app.command("presets")
def presets() -> None:
    """List the presets `config init --preset` accepts."""
    for name in config_module.preset_names():
        typer.echo(name)


@app.command("docs")
def docs() -> None:
    """Print the Markdown configuration reference (docs/config.md)."""
    plugins.import_entry_points()
    typer.echo(config_module.reference_markdown(), nl=False)
