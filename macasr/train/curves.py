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
    from matplotlib.figure import Figure

CURVES_FILE = "curves.png"
NO_MATPLOTLIB = "curves.png not drawn: it needs matplotlib (pip install 'macasr[plots]')"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl; a line cut short by a crash is left out."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
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


def plot_curves(metrics_path: Path, out: Path) -> Figure:
    """Draw loss (left) and validation WER in % (right; one line per dataset when several) over
    steps into `out` (PNG, written to a temporary file and renamed) → the figure. Needs matplotlib."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    records = read_metrics(metrics_path)
    figure = Figure(figsize=(11, 4), layout="constrained")
    FigureCanvasAgg(figure)
    loss_ax, wer_ax = figure.subplots(1, 2)
    steps, loss = series(records, "loss")
    loss_ax.plot(steps, loss, color="tab:blue")
    loss_ax.set(title="training loss", xlabel="optimizer step", ylabel="cross-entropy per target token")
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
    wer_ax.set(title="validation WER", xlabel="optimizer step", ylabel="WER (%)")
    for ax in (loss_ax, wer_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    partial = out.with_name(f".{out.name}.tmp")
    figure.savefig(partial, format="png", dpi=100)
    os.replace(partial, out)
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
