"""Where training metrics go: a JSON Lines file in the run folder always, wandb when asked.

Rich progress and console output live here too, so the engine only calls `log` and `print`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from macasr.errors import MacasrError


class MetricsLog:
    """Appends one JSON object per `log` call to metrics.jsonl; mirrors to wandb when enabled."""

    def __init__(self, path: Path, wandb_run: Any = None, fresh: bool = True) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fresh:  # a new run starts a new file; a resumed one appends
            self.path.write_text("", encoding="utf-8")
        self.wandb_run = wandb_run

    def log(self, step: int, **metrics: Any) -> None:
        record = {"step": step, "time": round(time.time(), 3), **metrics}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()


def start_wandb(project: str, name: str, config: dict[str, Any], run_dir: Path) -> Any:
    try:
        import wandb
    except ImportError:
        raise MacasrError("[logging] wandb = true needs the wandb package: pip install 'macasr[wandb]'") from None
    return wandb.init(project=project, name=name, config=config, dir=str(run_dir))


def training_progress(console: Console) -> Progress:
    """step m/n, loss, lr, audio seconds per second, elapsed and ETA."""
    return Progress(
        TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False,
    )
