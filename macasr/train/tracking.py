"""Where training metrics go: a JSON Lines file in the run folder always, TensorBoard and wandb
when asked, and a summary table (plus curves.png, see `macasr.train.curves`) at the end.

Rich progress and console output live here too, so the engine only calls `log` and `print`.
What each metric means, and its unit, is in docs/training.md ("What is logged").
"""

from __future__ import annotations

import contextlib
import json
import resource
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lhotse.cut import Cut
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from macasr.errors import MacasrError
from macasr.evaluate.wer import DatasetScore, overall

TENSORBOARD_DIR = "tensorboard"  # inside the run folder
VALID_SET = "valid"  # the name of validation cuts that carry no dataset name (custom["dataset"])


class MetricsLog:
    """Appends one JSON object per `log` call to metrics.jsonl; mirrors the numbers to
    TensorBoard and wandb when they are on (nested dicts become "outer/inner" scalars there)."""

    def __init__(self, path: Path, wandb_run: Any = None, fresh: bool = True, tensorboard: Any = None) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fresh:  # a new run starts a new file; a resumed one appends
            self.path.write_text("", encoding="utf-8")
        self.wandb_run = wandb_run
        self.tensorboard = tensorboard

    def log(self, step: int, **metrics: Any) -> None:
        record = {"step": step, "time": round(time.time(), 3), **metrics}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        numbers = scalars(metrics)
        if self.tensorboard is not None:
            for key, value in numbers.items():
                self.tensorboard.add_scalar(key, value, global_step=step)
        if self.wandb_run is not None:
            self.wandb_run.log(numbers, step=step)

    def close(self, summary: dict[str, Any] | None = None, failed: bool = False) -> None:
        """Flush and close the mirrors; `summary` (plain numbers) goes to the wandb run's summary,
        and a `failed` training marks the wandb run failed (exit code 1)."""
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb_run is not None:
            for key, value in (summary or {}).items():
                if value is not None:
                    self.wandb_run.summary[key] = value
            self.wandb_run.finish(exit_code=1 if failed else 0)


def scalars(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a metrics record, nested dicts flattened to "outer/inner"; None, text and
    booleans are left out (TensorBoard and wandb plot numbers)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= scalars(value, f"{name}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
    return out


def start_tensorboard(run_dir: Path, step: int) -> Any:
    """A SummaryWriter on runs/<name>/tensorboard. A run resumed at `step` hides the events an
    earlier part of the run wrote past it (purge_step), as metrics.jsonl drops those lines."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MacasrError("[logging] tensorboard = true needs the tensorboard package: pip install 'macasr[tensorboard]'") from None
    return SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR), purge_step=step + 1 if step else None)


def start_wandb(project: str, name: str, config: dict[str, Any], run_dir: Path) -> Any:
    """A wandb run with the config and the run folder (config "run_dir"); its files go to
    runs/<name>/wandb. `WANDB_MODE=offline` keeps everything on disk (`wandb sync` uploads it later)."""
    try:
        import wandb
    except ImportError:
        raise MacasrError("[logging] wandb = true needs the wandb package: pip install 'macasr[wandb]'") from None
    return wandb.init(project=project, name=name, config={**config, "run_dir": str(run_dir.resolve())}, dir=str(run_dir))


def peak_memory(device: torch.device) -> dict[str, float]:
    """The training process's peak memory so far, in MiB: on CUDA what tensors held on its GPU
    (`peak_gpu_allocated_mib`, torch.cuda.max_memory_allocated: the caching allocator reserves
    somewhat more), elsewhere its peak resident set size (`peak_rss_mib`, getrusage; DataLoader
    workers are separate processes and not counted)."""
    if device.type == "cuda":
        return {"peak_gpu_allocated_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return {"peak_rss_mib": round(maxrss / (2**20 if sys.platform == "darwin" else 2**10), 1)}


class LogWindow:
    """What the optimizer steps since the last metrics line add up to, and the run's totals.

    Losses and gradient norms stay device tensors until `flush` reads them (one host sync per
    metrics line). Time spent inside `paused()` (validation, checkpoints) counts in neither the
    throughput nor the training time.
    """

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.steps_taken = 0  # optimizer steps taken in this process (a resumed run counts from its resume)
        self.refused_total = 0
        self.audio_total = 0.0
        self.train_seconds = 0.0
        self.last_loss: float | None = None
        self._reset()

    def _reset(self) -> None:
        self.loss: torch.Tensor | float = 0.0
        self.grad_norm: torch.Tensor | float = 0.0
        self.steps = 0
        self.refused = 0
        self.audio_s = 0.0
        self.paused_s = 0.0
        self.t0 = time.perf_counter()

    def add(self, loss: torch.Tensor, audio_s: float, grad_norm: torch.Tensor | None) -> None:
        """A step taken: its mean loss, the audio seconds of its micro-batches, its gradient norm
        before clipping."""
        self.loss = self.loss + loss
        self.grad_norm = self.grad_norm + (grad_norm.detach().float() if grad_norm is not None else 0.0)
        self.steps += 1
        self.audio_s += audio_s

    def refuse(self, audio_s: float) -> None:
        """A step not taken (non-finite loss or gradient): its audio was still processed."""
        self.refused += 1
        self.audio_s += audio_s

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.paused_s += time.perf_counter() - start

    def flush(self, lr: float, device: torch.device, world_size: int = 1) -> dict[str, Any]:
        """The metrics line of this window (see docs/training.md, "What is logged"), then a new window.

        The audio seconds added are those of every rank (the engine sums them over ranks each
        step), so throughput is all ranks' audio per second of training time, and per process
        that over `world_size`."""
        elapsed = max(time.perf_counter() - self.t0 - self.paused_s, 1e-9)
        steps = max(self.steps, 1)
        loss = float(self.loss) / steps
        total = self.audio_s / elapsed
        line = {
            "loss": round(loss, 5), "lr": lr, "grad_norm": round(float(self.grad_norm) / steps, 5),
            "refused_steps": self.refused,
            "audio_seconds_per_second": round(total, 1),
            "audio_seconds_per_second_per_process": round(total / world_size, 1),
            **peak_memory(device),
        }
        if self.steps:
            self.last_loss = loss
        self.steps_taken += self.steps
        self.refused_total += self.refused
        self.audio_total += self.audio_s
        self.train_seconds += elapsed
        self._reset()
        return line


# ---------------------------------------------------------------------------- validation per dataset


def with_dataset(name: str, cut: Cut) -> Cut:
    """`cut` marked with the validation dataset it comes from (custom["dataset"])."""
    return cut.with_custom("dataset", name)


def valid_sets(cuts: Sequence[Cut]) -> dict[str, list[Cut]]:
    """Validation cuts grouped by their dataset (custom["dataset"], else "valid"), in order."""
    groups: dict[str, list[Cut]] = {}
    for cut in cuts:
        groups.setdefault((cut.custom or {}).get("dataset", VALID_SET), []).append(cut)
    return groups


def score_valid_sets(cuts: Sequence[Cut], evaluate: Callable[[list[Cut], str], DatasetScore]
                     ) -> tuple[DatasetScore, dict[str, DatasetScore]]:
    """Score each validation dataset with `evaluate(cuts, name)` → (all of them pooled, each by name).

    Pooled WER is total errors over total reference words (`overall`), not a mean of rates."""
    scores = {name: evaluate(group, name) for name, group in valid_sets(cuts).items()}
    pooled = overall(list(scores.values())) if len(scores) > 1 else next(iter(scores.values()))
    return pooled, scores


def wer_by_dataset(scores: dict[str, DatasetScore]) -> dict[str, float | None]:
    """{dataset: WER as a fraction}; None for a dataset that has no WER (see DatasetScore.problem)."""
    return {name: None if s.problem else round(s.wer, 5) for name, s in scores.items()}


# ---------------------------------------------------------------------------- console


def training_progress(console: Console) -> Progress:
    """step m/n, loss, lr, audio seconds per second, elapsed and ETA."""
    return Progress(
        TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False,
    )


@dataclass(frozen=True)
class RunSummary:
    """What the end-of-training table shows; times in seconds, WER as a fraction."""

    step: int
    first_step: int  # the step this process started from (0, or where it resumed)
    wall_seconds: float
    train_seconds: float
    audio_seconds: float
    best_wer: float | None
    best_step: int | None
    final_loss: float | None
    refused_steps: int
    checkpoints: tuple[str, ...]

    @classmethod
    def of(cls, window: LogWindow, step: int, first_step: int, best_wer: float | None, best_step: int | None,
           run_dir: Path) -> RunSummary:
        return cls(step, first_step, time.perf_counter() - window.started, window.train_seconds, window.audio_total,
                   best_wer, best_step, window.last_loss, window.refused_total,
                   tuple(sorted(p.name for p in run_dir.glob("*.pt") if p.is_file())))

    def wandb(self) -> dict[str, Any]:
        """The numbers a wandb run's summary keeps."""
        return {"best_wer": self.best_wer, "best_step": self.best_step, "final_loss": self.final_loss,
                "refused_steps_total": self.refused_steps}


def _duration(seconds: float) -> str:
    """'4.2 s', '3m 07s', '2h 05m 00s'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h {m:02d}m {s:02d}s" if hours else f"{m}m {s:02d}s"


def summary_table(s: RunSummary) -> Table:
    """Steps, time, best WER and its step, final loss, throughput, refused steps, checkpoints."""
    table = Table(title="Training summary", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    resumed = f" (resumed at step {s.first_step:,})" if s.first_step else ""
    throughput = f"{s.audio_seconds / s.train_seconds:,.1f} audio s/s" if s.train_seconds > 0 else "n/a"
    rows = [
        ("steps", f"{s.step:,}{resumed}"),
        ("time", f"{_duration(s.wall_seconds)} ({_duration(s.train_seconds)} training, the rest validation and checkpoints)"),
        ("best valid WER", "n/a" if s.best_wer is None else f"{100 * s.best_wer:.2f} % at step {s.best_step:,}"),
        ("final loss", "n/a" if s.final_loss is None else f"{s.final_loss:.4f}"),
        ("throughput", throughput),
        ("refused steps", f"{s.refused_steps:,} (non-finite loss or gradient)"),
        ("checkpoints", ", ".join(s.checkpoints) or "none"),
    ]
    for what, value in rows:
        table.add_row(what, value)
    return table
