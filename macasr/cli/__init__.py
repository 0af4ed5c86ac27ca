"""The `macasr` command: assembles one small module per command. Parsing and printing only."""

from __future__ import annotations

import typer

from macasr import __version__
from macasr.cli import config_cmd, data_cmd, demo_cmd, eval_cmd, train_cmd, transcribe_cmd
from macasr.cli import plan_cmd
from macasr.cli._common import typer_app

app = typer_app(
    name="macasr", no_args_is_help=True,
    help="Speech-LLM ASR: a frozen speech encoder, a trainable connector and a causal LLM.",
)
app.command("train")(train_cmd.train)
app.command("eval")(eval_cmd.evaluate)
app.command("transcribe")(transcribe_cmd.transcribe)
app.command("demo")(demo_cmd.demo)
app.command("plan")(plan_cmd.plan)
app.add_typer(config_cmd.app, name="config")
app.add_typer(data_cmd.app, name="data")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"macasr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """Speech-LLM ASR: a frozen speech encoder, a trainable connector and a causal LLM."""


def main() -> None:
    app()
