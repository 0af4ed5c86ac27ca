"""`macasr train` as a library call: config → model + data → Trainer → run folder."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from macasr import config as config_module
from macasr.config import Config
from macasr.data.manifest import Utterance, load_manifests
from macasr.errors import CheckpointError, ConfigError
from macasr.model.build import build_model, parameter_counts, resolve_device, resolve_precision
from macasr.model.speech_llm import SpeechLLM
from macasr.train.engine import Trainer, TrainResult, seed_everything


def parameter_table(model: SpeechLLM) -> Table:
    """Total and trainable parameters per part; a "LoRA adapters" column appears when any part has them."""
    counts = parameter_counts(model)
    lora = any(c.adapters for c in counts.values())
    table = Table(title="Parameters", title_justify="left")
    for column in ("part", "total", "trainable", *(["LoRA adapters"] if lora else [])):
        table.add_column(column, justify="left" if column == "part" else "right")
    rows = [(part, *c) for part, c in counts.items()]
    rows.append(("all", *(sum(column) for column in zip(*counts.values()))))
    for part, total, trainable, adapters in rows:
        extra = [f"{adapters:,}" if adapters else "-"] if lora else []
        table.add_row(part, f"{total:,}", f"{trainable:,}", *extra, style="bold" if part == "all" else None)
    return table


def training_sets(cfg: Config) -> tuple[list[Utterance], list[Utterance]]:
    if not cfg.data.train:
        raise ConfigError("[data] train: no training manifests given")
    train_set = load_manifests(cfg.data.train)
    if cfg.data.max_duration > 0:
        train_set = [u for u in train_set if u.duration <= cfg.data.max_duration]
    return train_set, load_manifests(cfg.data.valid) if cfg.data.valid else []


def train(cfg: Config, console: Console | None = None, resume: bool = False) -> TrainResult:
    """Train as configured; with `resume`, continue from the run folder's last.pt."""
    console = console or Console()
    cfg = config_module.resolve_paths(cfg)
    last = cfg.run_dir / "last.pt"
    if resume and not last.is_file():
        raise CheckpointError(f"{last}: nothing to resume from")
    train_set, valid_set = training_sets(cfg)
    seed_everything(cfg.train.seed)
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    model = build_model(cfg, device, precision)
    console.print(parameter_table(model))
    hours = sum(u.duration for u in train_set) / 3600
    console.print(f"train: {len(train_set):,} clips ({hours:.2f} h), valid: {len(valid_set):,} clips; "
                  f"device {device}, precision {precision}; run folder {cfg.run_dir}")
    trainer = Trainer(cfg, model, train_set, valid_set, device, precision, console)
    if resume:
        trainer.resume(last)
        console.print(f"resumed from {last} at step {trainer.step}")
    return trainer.fit()
