"""`macasr compare RUN_DIR... [--plot out.png]`: training runs side by side, from their run folders
(config differences, steps, best validation WER, throughput, test WER per dataset); no model is
loaded. Two eval reports of one model are compared by `macasr eval --compare a.json b.json`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from macasr.cli._common import console, err_console, handle_errors


@handle_errors
def compare(
    runs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR", help="Run folders that `macasr train` wrote (runs/NAME: config.toml, metrics.jsonl, and any eval reports *.json); one prints its summary alone.", show_default=False)],
    plot: Annotated[Path | None, typer.Option("--plot", metavar="OUT.png", help="Also draw the runs' training loss and validation WER over steps into this image (.png, .pdf or .svg; its folder must exist; needs 'macasr[plots]').", show_default=False)] = None,
) -> None:
    """Compare training runs: the config keys that differ, steps, best validation WER and its step,
    throughput, and test WER per dataset from the eval reports in each run folder. Loads no model.
    To compare two eval reports utterance by utterance, use `macasr eval --compare A.json B.json`."""
    from macasr.train.compare_runs import check_plot_path, differences_table, load_runs, notes, plot_runs, results_table

    if plot is not None:
        check_plot_path(plot)
    loaded = load_runs(runs)
    if len(loaded) > 1:
        console.print(differences_table(loaded))
    else:
        err_console.print("[yellow]note:[/] one run: its summary alone (give two or more run folders to compare them)", soft_wrap=True)
    console.print(results_table(loaded))
    for note in notes(loaded):
        err_console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    if plot is not None:
        plot_runs(loaded, plot)
        console.print(f"curves: {escape(str(plot))}")
