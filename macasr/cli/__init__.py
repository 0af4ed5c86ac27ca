"""The `macasr` command: assembles one small module per command. Parsing and printing only."""

from __future__ import annotations

import warnings

import typer
from rich.markup import escape

from macasr import __version__
from macasr.cli import config_cmd, data_cmd, demo_cmd, eval_cmd, train_cmd, transcribe_cmd
from macasr.cli import average_cmd, cache_cmd, compare_cmd, export_cmd, inspect_cmd, plan_cmd
from macasr.cli._common import err_console, typer_app
from macasr.errors import DeprecatedSetting

app = typer_app(
    name="macasr", no_args_is_help=True,
    help="Speech-LLM ASR: a frozen speech encoder, a trainable connector and a causal LLM.",
)
app.command("train")(train_cmd.train)
app.command("eval")(eval_cmd.evaluate)
app.command("transcribe")(transcribe_cmd.transcribe)
app.command("export")(export_cmd.export)
app.command("average")(average_cmd.average)
app.command("demo")(demo_cmd.demo)
app.command("plan")(plan_cmd.plan)
app.command("compare")(compare_cmd.compare)
app.command("inspect")(inspect_cmd.inspect)
app.add_typer(config_cmd.app, name="config")
app.add_typer(data_cmd.app, name="data")
app.add_typer(cache_cmd.app, name="cache")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"macasr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """Speech-LLM ASR: a frozen speech encoder, a trainable connector and a causal LLM."""


def _show_warning(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
    """A DeprecatedSetting as one yellow line; any other warning as Python shows it."""
    if issubclass(category, DeprecatedSetting):
        err_console.print(f"[yellow]warning:[/] {escape(str(message))}", soft_wrap=True)
    else:
        _python_show_warning(message, category, *args, **kwargs)  # type: ignore[arg-type]


_python_show_warning = warnings.showwarning


def main() -> None:
    warnings.showwarning = _show_warning
    app()
