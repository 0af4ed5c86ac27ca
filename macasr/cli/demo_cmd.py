"""`macasr demo`: synthesize speech, save Whisper tiny.en and a tiny Qwen3, train, evaluate; no model hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from macasr.cli._common import console, handle_errors


@handle_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Run folder for data, models and checkpoints.")] = Path("runs/demo"),
    steps: Annotated[int | None, typer.Option("--steps", help="Optimizer steps (default: the demo preset's).", min=1, show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the corpus and the models.")] = 0,
) -> None:
    """Train and evaluate a tiny speech-LLM on a synthetic spoken corpus, on CPU, in minutes."""
    from rich.markup import escape

    from macasr.demo import DemoStopped, run_demo
    from macasr.train.faults import EXIT_CODES

    try:
        run_demo(out, console, steps, seed)
    except DemoStopped as e:  # not a failure: say where training stands and exit as `macasr train` does
        console.print(f"[yellow]{escape(str(e))}", highlight=False, soft_wrap=True)  # paths stay whole
        raise typer.Exit(EXIT_CODES.get(e.signal, 1)) from None
