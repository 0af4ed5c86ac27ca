"""Shared pieces of the CLI: the app factory, consoles, option aliases and the one place errors
become messages."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from macasr.errors import MacasrError

F = TypeVar("F", bound=Callable[..., Any])

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def typer_app(**settings: Any) -> typer.Typer:
    """The `macasr` app and each command group, with help texts shown as written.

    rich_markup_mode=None because Typer's default ("rich") reads help texts as console markup,
    so `[eval]` and `[data]` vanished, and its option panels print `<bool>` after every flag
    (typer 0.29); click's plain help keeps both right, for every command.
    """
    return typer.Typer(rich_markup_mode=None, add_completion=False, pretty_exceptions_enable=False, **settings)


def debug() -> bool:
    return os.environ.get("MACASR_DEBUG", "") not in ("", "0")


def fail(message: str) -> typer.Exit:
    """Print one red line per message line to stderr; return the Exit(1) to raise."""
    for line in message.splitlines() or [message]:
        err_console.print(f"[red]error:[/] {escape(line)}", soft_wrap=True)
    return typer.Exit(1)


def handle_errors(command: F) -> F:
    """A MacasrError (bad config, data or checkpoint) becomes red lines and exit status 1;
    the traceback shows only with MACASR_DEBUG=1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except MacasrError as e:
            if debug():
                raise
            raise fail(str(e)) from None

    return wrapper  # type: ignore[return-value]


@handle_errors  # runs while options are parsed, before the command's own handle_errors
def check_device(value: str) -> str:
    """`--device` callback: a misspelt or absent device is one line, before anything loads."""
    from macasr.model.build import resolve_device

    resolve_device(value, "--device")
    return value


class OnOff(str, Enum):
    on = "on"
    off = "off"


def vad_override(vad: OnOff | None) -> dict[str, bool]:
    """`--vad on|off` as a config override ({} when not given)."""
    return {} if vad is None else {"eval.vad": vad is OnOff.on}


CheckpointOpt = Annotated[Path, typer.Option("--ckpt", help="Training checkpoint (best.pt, last.pt), or a bundle folder written by `macasr export`.", show_default=False)]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (cuda when available, else cpu), cpu, cuda, cuda:1, mps, xpu.", callback=check_device)]
VadOpt = Annotated[OnOff | None, typer.Option("--vad", help="Voice activity detection: on (audio without speech gets an empty transcript, undecoded) or off (default: [eval] vad).", show_default=False)]
NumBeamsOpt = Annotated[int | None, typer.Option("--num-beams", help="Beam width, 1 = greedy (default: [eval] num_beams).", min=1, show_default=False)]
RepeatNgramOpt = Annotated[int | None, typer.Option("--repeat-ngram-stop", help="Repeat guard's n, 0 = off (default: [eval] repeat_ngram_stop).", min=0, show_default=False)]
BatchSizeOpt = Annotated[int | None, typer.Option("--batch-size", help="Clips decoded together (default: [eval] batch_size).", min=1, show_default=False)]
SetOpt = Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="Override a key of the config, e.g. --set train.lr=3e-4 or --set model.connector.name=qformer (repeatable; VALUE is read as TOML, a bare word as a string).", show_default=False)]


def _checkpoint_set_opt(uses: str) -> Any:
    """`--set` of a checkpoint command; `uses`: the keys of how this command runs, with an example that works on it."""
    return Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help=(
        "Override a key of the checkpoint's stored config (repeatable; VALUE is read as TOML, a bare word as a string): "
        f"--set model.llm.path=DIR (or model.encoder.path) for a model folder that moved; {uses}. A [model] or [prompt] "
        "key changes the model it was trained as: allowed, with a warning; keys this command does not use are refused."),
        show_default=False)]


CheckpointSetOpt = _checkpoint_set_opt("[eval] keys, e.g. --set eval.num_beams=4")
InspectSetOpt = _checkpoint_set_opt("train.precision, e.g. --set train.precision=fp32")


def refuse_clashes(options: dict[str, Any], sets: list[str] | None) -> None:
    """A config key set both by one of the command's options (`options`: key → value, e.g.
    {"eval.num_beams": 3} from --num-beams) and by a --set flag: which should win is not obvious,
    so it is a one-line error naming both."""
    from macasr.config_overrides import parse_overrides

    for o in parse_overrides(sets):
        if o.key in options:
            value = getattr(options[o.key], "value", options[o.key])  # an enum option as typed
            raise fail(f"--set {o.text}: {o.key} is also given by an option of this command ({value!r}); give one of them")


def checkpoint_sets(sets: list[str] | None, command: str) -> list[str] | None:
    """The `--set` flags of a checkpoint command, checked (config_overrides.checkpoint_overrides:
    flags it does not use are a MacasrError), with a yellow warning for those that change the model."""
    from macasr.config_overrides import checkpoint_overrides

    for line in checkpoint_overrides(sets, command):
        err_console.print(f"[yellow]warning:[/] {escape(line)}", soft_wrap=True)
    return sets
