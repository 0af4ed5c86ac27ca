"""runs/<name>/curves.png: training loss and validation WER over optimizer steps, drawn from
metrics.jsonl at the end of training (matplotlib, the optional extra `macasr[plots]`).

Drawn with matplotlib's object API on an Agg canvas, so no display and no pyplot state are
needed, whatever MPLBACKEND says.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

CURVES_FILE = "curves.png"
NO_MATPLOTLIB = "curves.png not drawn: it needs matplotlib (pip install 'macasr[plots]')"


def read_metrics(path: Path, strict: bool = False) -> list[dict[str, Any]]:
    """The records of metrics.jsonl; a line cut short by a crash is left out. `strict`: any other
    line that is not a JSON object with a whole `step` is a MacasrError naming `path:line` (only
    the last line may be cut short, and only when the file does not end with a newline)."""
    from macasr.errors import MacasrError

    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int) and not isinstance(record["step"], bool):
            records.append(record)
        elif strict and not (number == len(lines) and not text.endswith("\n")):
            raise MacasrError(f"{path}:{number}: not a metrics line (expected a JSON object with a whole `step`, "
                              f"as `macasr train` writes): {line[:60]!r}")
    return records


def series(records: list[dict[str, Any]], key: str, inner: str | None = None) -> tuple[list[int], list[float]]:
    """(steps, values) of `key` (or of `record[key][inner]`), sorted by step; a step logged twice
    (a resumed run that repeated it) keeps its last value; null values are left out."""
    by_step: dict[int, float] = {}
    for record in records:
        value = record.get(key)
        if inner is not None:
            value = value.get(inner) if isinstance(value, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            by_step[record["step"]] = float(value)
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def new_figure() -> tuple[Figure, Axes, Axes]:
    """An Agg figure with the loss axes (left) and the validation-WER axes (right), titled and
    labelled → (figure, loss axes, WER axes). Needs matplotlib."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4), layout="constrained")
    FigureCanvasAgg(figure)
    loss_ax, wer_ax = figure.subplots(1, 2)
    loss_ax.set(title="training loss", xlabel="optimizer step", ylabel="cross-entropy per target token")
    wer_ax.set(title="validation WER", xlabel="optimizer step", ylabel="WER (%)")
    return figure, loss_ax, wer_ax


def save_figure(figure: Figure, out: Path) -> None:
    """Grid and whole-step ticks on every axes, then the image at `out` (a temporary file renamed),
    in the format its suffix names (.png, .pdf, .svg; PNG for any other)."""
    from matplotlib.ticker import MaxNLocator

    for ax in figure.axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    partial = out.with_name(f".{out.name}.tmp")
    kind = out.suffix.lower().lstrip(".")
    figure.savefig(partial, format=kind if kind in ("pdf", "svg") else "png", dpi=100)
    os.replace(partial, out)


def plot_curves(metrics_path: Path, out: Path) -> Figure:
    """Draw loss (left) and validation WER in % (right; one line per dataset when several) over
    steps into `out` (PNG, written to a temporary file and renamed) → the figure. Needs matplotlib."""
    records = read_metrics(metrics_path)
    figure, loss_ax, wer_ax = new_figure()
    steps, loss = series(records, "loss")
    loss_ax.plot(steps, loss, color="tab:blue")
    datasets = list(dict.fromkeys(name for r in records if isinstance(r.get("valid_wer_by_dataset"), dict)
                                  for name in r["valid_wer_by_dataset"]))  # in [data] valid order
    if len(datasets) > 1:
        for name in datasets:
            steps, wer = series(records, "valid_wer_by_dataset", name)
            wer_ax.plot(steps, [100 * w for w in wer], marker="o", label=name)
    steps, wer = series(records, "valid_wer")
    wer_ax.plot(steps, [100 * w for w in wer], marker="o", color="black", label="all valid sets" if len(datasets) > 1 else None)
    if len(datasets) > 1:
        wer_ax.legend()
    if not steps:
        wer_ax.text(0.5, 0.5, "no validation WER logged", ha="center", va="center", transform=wer_ax.transAxes)
    save_figure(figure, out)
    return figure


def draw_curves(run_dir: Path) -> str:
    """curves.png in `run_dir` from its metrics.jsonl → one line saying what happened (drawn,
    or why not: no matplotlib)."""
    try:
        import matplotlib  # noqa: F401  (the optional extra macasr[plots])
    except ImportError:
        return NO_MATPLOTLIB
    out = run_dir / CURVES_FILE
    plot_curves(run_dir / "metrics.jsonl", out)
    return f"curves: {out}"
