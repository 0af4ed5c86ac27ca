"""`macasr average CKPT... --out avg.pt` / `macasr average --last N RUN_DIR --out avg.pt` (docs/training.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from macasr.cli._common import console, err_console, handle_errors
from macasr.errors import MacasrError


@handle_errors
def average(
    paths: Annotated[list[Path], typer.Argument(metavar="CKPT", help="Checkpoints to average (.pt files); with --last, one run folder.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Checkpoint file to write the average to.", show_default=False)],
    last: Annotated[int | None, typer.Option("--last", metavar="N", help="Average the N newest (by step) of the run folder's kept checkpoints: best.pt, best-step<STEP>.pt, last.pt (N at least 2).", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file.")] = False,
) -> None:
    """Average checkpoints' trained weights (element-wise mean) into a new checkpoint that eval, transcribe and export take."""
    from macasr.train.average import average_checkpoints, last_checkpoints

    if last is not None:
        if len(paths) != 1:
            raise MacasrError(f"--last {last} takes one run folder, got {len(paths)} paths")
        paths = last_checkpoints(paths[0], last)
    notes: list[str] = []
    written = average_checkpoints(paths, out, force=force, notes=notes)
    for note in notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    console.print(f"averaged {len(paths)} checkpoints ({', '.join(escape(str(p)) for p in paths)}) into {escape(str(written))}",
                  soft_wrap=True)
