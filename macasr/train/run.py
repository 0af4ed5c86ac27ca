"""`macasr train` as a library call: config → model + data → Trainer → run folder."""

from __future__ import annotations

import contextlib
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from lhotse import CutSet
from lhotse.cut import Cut
from rich.console import Console
from rich.table import Table

from macasr import config as config_module
from macasr.config import Config
from macasr.data.augment import build_augmenter
from macasr.data.cache import frames_from_config
from macasr.data.loader import chain, duration_range, own_part, target_text
from macasr.data.manifest import dataset_sources, manifest_summary, open_cuts
from macasr.errors import CheckpointError, ConfigError, DataError, MacasrError
from macasr.model.build import build_model, parameter_counts, resolve_device, resolve_precision
from macasr.model.speech_llm import SpeechLLM
from macasr.train.curves import CURVES_FILE
from macasr.train.distributed import World, init_distributed, rank_device, teardown
from macasr.train.engine import BAD_CLIPS_FILE, Trainer, TrainResult, seed_everything
from macasr.train.faults import RunLock, remove_stale_temporaries
from macasr.train.memory import apply_training_options
from macasr.train.threads import threads_beside_workers
from macasr.train.tracking import TENSORBOARD_DIR, with_dataset
from macasr.train.warm_start import warm_start


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


def training_sets(cfg: Config, world: World = World()) -> tuple[list[tuple[Any, CutSet]], list[Cut]]:
    """→ (each [data] train source with its lazy cuts, the validation cuts with their sources'
    target text and name (custom["dataset"], for WER per dataset), at most [eval]
    valid_max_utterances of them). Every manifest is opened (and checked) here, before any
    model is built. With several ranks and a Shar folder among the training manifests, each rank
    opens only its own part of each (`own_part`; the Trainer then samples it as one process's)."""
    if not cfg.data.train:
        raise ConfigError("[data] train: no training data given")
    seed = cfg.train.seed  # Shar shards are read in a seeded random order
    allow = cfg.data.allow_commands
    sources = dataset_sources(cfg, "train")
    part = own_part([p for source in sources for p in source.manifests], world.rank, world.size)
    train = [(source, chain([open_cuts(p, shuffle_shards=True, seed=seed, allow_commands=allow, part=part)
                             for p in source.manifests])) for source in sources]
    valid = [target_text(chain([open_cuts(p, allow_commands=allow) for p in source.manifests]), source)
             .map(partial(with_dataset, source.name)) for source in (dataset_sources(cfg, "valid") if cfg.data.valid else [])]
    cap = cfg.eval.valid_max_utterances or None
    return train, list(islice((cut for cuts in valid for cut in cuts), cap))


def data_banner(train: list[tuple[Any, CutSet]], cfg: Config) -> str:
    """'librispeech: 28,539 clips (100.59 h, weight 1)' per training source (one streaming pass
    each); DataError for a source that its duration limits leave empty (in a mixture it would
    silently give its share to the others)."""
    parts = []
    for source, _ in train:
        limits = duration_range(source, cfg.data.min_duration, cfg.data.max_duration)
        summaries = [manifest_summary(p) for p in source.manifests]  # read when opened: no second pass
        clips, hours = sum(s.cuts for s in summaries), sum(s.seconds for s in summaries) / 3600
        kept = sum(s.kept(limits.low, limits.high) for s in summaries) if limits else clips
        if kept == 0:
            raise DataError(f"[data] train: none of the {clips:,} clips of `{source.name}` is within its duration limits "
                            f"({limits}; [datasets.{source.name}] and [data] min_duration/max_duration); "
                            "loosen them or leave it out of [data] train")
        within = f", {kept:,} within the duration limits" if kept < clips else ""
        weight = f", weight {source.weight:g}" if len(train) > 1 else ""
        parts.append(f"{source.name}: {clips:,} clips ({hours:.2f} h{weight}{within})")
    return "; ".join(parts)


def run_files(run_dir: Path) -> list[Path]:
    """What a run leaves in its folder (config.toml, metrics.jsonl, bad_clips.jsonl, curves.png, checkpoints,
    TensorBoard event files); other files, such as the demo's data/ and models/ or wandb/, are not part of it."""
    if not run_dir.is_dir():
        return []
    named = [run_dir / n for n in ("config.toml", "metrics.jsonl", BAD_CLIPS_FILE, CURVES_FILE) if (run_dir / n).is_file()]
    events = sorted(p for p in (run_dir / TENSORBOARD_DIR).glob("events.out.tfevents.*") if p.is_file())
    return named + sorted(p for p in run_dir.glob("*.pt") if p.is_file()) + events


def _took_a_step(files: list[Path]) -> bool:
    """Whether a run's files hold any progress: a checkpoint, or a metrics line."""
    return any(p.suffix == ".pt" or (p.name == "metrics.jsonl" and p.stat().st_size > 0) for p in files)


def resume_source(run_dir: Path, resume: bool | str | Path) -> Path | None:
    """The last.pt a run continues from: None (a new run), the run folder's (True, "auto"), or a given path."""
    if resume is False or resume is None:
        return None
    return run_dir / "last.pt" if resume is True or str(resume) == "auto" else Path(resume)


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool, source: Path | None = None) -> list[Path]:
    """Refuse to start over an earlier run unless told to → the files that will be removed: those of
    an earlier run with `overwrite`, and those of a run that never took a step (nothing to lose).
    `source` is a last.pt given to resume from instead of the run folder's."""
    elsewhere = resume and source is not None and source != run_dir / "last.pt"  # --resume-from another run's last.pt
    if resume and overwrite:
        flag = "--resume-from" if elsewhere else "--resume"
        raise MacasrError(f"{flag} continues a run and --overwrite starts the run folder over; give only one")
    if elsewhere and source.is_dir():
        raise CheckpointError(f"{source}: is a folder, not a checkpoint file; give the last.pt in it")
    if elsewhere and not source.is_file():
        raise CheckpointError(f"{source}: nothing to resume from (no such file)")
    found = run_files(run_dir)
    names = ", ".join(str(p.relative_to(run_dir)) for p in found)
    if elsewhere and found and _took_a_step(found):
        raise MacasrError(f"{run_dir} already holds a run ({names}); continuing {source} there would mix two runs; "
                          "give it a new [train] name (run folder), or continue the folder's own run with --resume")
    if found and not resume and not _took_a_step(found):
        return found  # a run that failed before its first step: nothing of value to keep
    if resume and source in (None, run_dir / "last.pt") and not (run_dir / "last.pt").is_file():
        advice = f" (the folder holds {names}); start over with --overwrite" if found else "; start the run without --resume"
        raise CheckpointError(f"{run_dir / 'last.pt'}: nothing to resume from{advice}")
    if found and not (resume or overwrite):
        raise MacasrError(f"{run_dir} already holds a run ({names}); continue it with --resume, start a new run "
                          f"beside it with another [train] name (e.g. --set train.name=NEW), or start over with "
                          f"--overwrite (removes {names})")
    return found if overwrite else []


def global_batch(cfg: Config, ranks: int) -> str:
    """What one optimizer step sees: per-rank batch limits × ranks × grad_accum (what the lr schedule counts)."""
    d, accum = cfg.data, cfg.train.grad_accum
    per_rank = " and ".join([f"{d.max_batch_seconds:g} s of audio"] * (d.max_batch_seconds > 0) + [f"{d.batch_size} clips"] * (d.batch_size > 0))
    total = " and ".join([f"{d.max_batch_seconds * ranks * accum:g} s"] * (d.max_batch_seconds > 0) + [f"{d.batch_size * ranks * accum} clips"] * (d.batch_size > 0))
    return (f"global batch: up to {per_rank or 'any amount'} per micro-batch × {ranks} process{'es' if ranks > 1 else ''} "
            f"× grad_accum {accum} = up to {total or 'no limit'} per optimizer step ([train] lr, warmup_steps and max_steps count these steps)")


def train(cfg: Config, console: Console | None = None, resume: bool | str | Path = False, overwrite: bool = False) -> TrainResult:
    """Train as configured into cfg.run_dir, in this process or as one rank of a torchrun job.

    A run folder that holds an earlier run (config.toml, metrics.jsonl, *.pt) is refused with a
    MacasrError unless `resume` (True or "auto": continue from its last.pt; a path: from that
    last.pt) or `overwrite` (remove those files, once the new run's data and model have loaded,
    and start over). A run folder in use by another run (its train.lock) is refused too; stale
    temporary files of killed writes are removed. A stop signal ends the run after its step with
    last.pt written (TrainResult.signal names it). Ranks other than 0 print nothing and write
    nothing. A failure is raised without leaving the process group here (NCCL's teardown can wait
    on ranks still running; the process exit ends it).
    """
    cfg = config_module.resolve_paths(cfg)
    device = resolve_device(cfg.train.device, "[train] device")
    world = init_distributed(device.type, cfg.train.distributed_timeout_s)
    try:
        result = _locked(cfg, (console or Console()) if world.is_main else Console(quiet=True), resume, overwrite, world,
                         rank_device(device, world))
    except MacasrError as e:
        if world.distributed and not str(e).startswith("rank "):  # which of the ranks printing it failed
            e.args = (f"rank {world.rank} of {world.size}: {e}",)
        raise
    teardown()
    return result


def _locked(cfg: Config, console: Console, resume: bool | str | Path, overwrite: bool, world: World,
            device: torch.device) -> TrainResult:
    """`train` in a checked run folder, which the process that writes it (rank 0) locks and tidies."""
    source = resume_source(cfg.run_dir, resume)
    stale = check_run_dir(cfg.run_dir, source is not None, overwrite, source)
    main = world.is_main
    with RunLock(cfg.run_dir).acquire(resume=source is not None) if main else contextlib.nullcontext() as lock:
        if lock is not None and lock.taken_over:
            console.print(f"[yellow]{lock.path}: {lock.taken_over}")
        if main and (leftovers := remove_stale_temporaries(cfg.run_dir)):
            console.print(f"removed {len(leftovers)} stale temporary file{'s' * (len(leftovers) > 1)} left in {cfg.run_dir} "
                          f"by a process killed while writing ({', '.join(p.name for p in leftovers[:3])}"
                          f"{', ...' if len(leftovers) > 3 else ''})")
        return _train(cfg, console, source, stale, overwrite, world, device)


def _train(cfg: Config, console: Console, source: Path | None, stale: list[Path], overwrite: bool, world: World,
           device: torch.device) -> TrainResult:
    """`train` once the run folder is checked and locked."""
    train_set, valid_set = training_sets(cfg, world)
    seed_everything(cfg.train.seed)
    precision = resolve_precision(cfg.train.precision, device)
    model = build_model(cfg, device, precision)
    started = warm_start(model, cfg, resuming=source is not None)  # [train] init_from; every rank loads the same weights
    options = apply_training_options(model, cfg)  # gradient checkpointing, torch.compile of the connector
    console.print(parameter_table(model))
    console.print(f"training data: {data_banner(train_set, cfg)}; valid: {len(valid_set):,} clips; "
                  f"device {device}{f' (rank 0 of {world.size})' if world.distributed else ''}, precision {precision}"
                  f"{''.join(f', {o}' for o in options)}; run folder {cfg.run_dir}")
    console.print(global_batch(cfg, world.size), markup=False)
    if started:
        console.print(started, markup=False)
    augment = build_augmenter(cfg.augment, cfg.train.seed)  # None when [augment] is all off
    frames_from = frames_from_config(cfg, model.encoder)  # None without [data] cache; frame_mask: the Trainer's SpecAugment
    trainer = Trainer(cfg, model, train_set, valid_set, device, precision, console, world=world,
                      augment=augment, frames_from=frames_from)
    if source is not None:
        trainer.resume(source)
        console.print(f"resumed from {source} at step {trainer.step}")
    if stale and world.is_main:  # every rank has checked the folder: building the Trainer waited for all
        for path in stale:
            path.unlink()
        why = "--overwrite" if overwrite else "a run that never took a step"
        console.print(f"{why}: removed {', '.join(str(p.relative_to(cfg.run_dir)) for p in stale)} of the earlier run in {cfg.run_dir}")
    # On the CPU, torch's threads leave the DataLoader workers their cores (see threads_beside_workers).
    with threads_beside_workers(cfg.data.num_workers) if device.type == "cpu" else contextlib.nullcontext():
        return trainer.fit()
