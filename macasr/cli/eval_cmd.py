"""`macasr eval --ckpt best.pt --manifest test.jsonl [--dataset NAME] [--report out.json]`.

Exit status 1 when any dataset has no WER (no clip could be read, or every reference is empty
after normalization), after the table and the report are written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from macasr.cli._common import BatchSizeOpt, DeviceOpt, VadOpt, console, err_console, fail, handle_errors, vad_override


@contextmanager
def dataset_progress() -> Iterator[Callable[[str, int], Callable[[Any], None]]]:
    """A Rich bar per dataset; yields the `progress(name, total)` hook evaluate_sets takes."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as progress:

        def start(name: str, total: int) -> Callable[[Any], None]:
            task = progress.add_task(escape(name), total=total)
            return lambda batch: progress.advance(task, len(batch) + len(batch.skipped) + len(batch.no_speech))

        yield start


@handle_errors
def evaluate(
    ckpt: Annotated[Path | None, typer.Option("--ckpt", help="Checkpoint to score (default: best.pt of --config's run folder).", show_default=False)] = None,
    manifest: Annotated[list[Path] | None, typer.Option("--manifest", help="JSONL manifest to score (repeatable).", show_default=False)] = None,
    dataset: Annotated[list[str] | None, typer.Option("--dataset", help="A dataset named in [datasets.*] (repeatable; default: [eval] test_sets).", show_default=False)] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Config whose [eval] settings and datasets, and [data] on_bad_clip, to use (default: the checkpoint's).", show_default=False)] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write the JSON report here (+ .utterances.jsonl beside it).", show_default=False)] = None,
    normalizer: Annotated[str | None, typer.Option("--normalizer", help="whisper, english, basic or none (default: [eval] normalizer).", show_default=False)] = None,
    on_bad_clip: Annotated[str | None, typer.Option("--on-bad-clip", help="An unreadable clip: skip (and count it) or error (stop) (default: [data] on_bad_clip).", show_default=False)] = None,
    batch_size: BatchSizeOpt = None,
    vad: VadOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Decode test sets and print a WER table per dataset and overall."""
    from macasr import config as config_module
    from macasr.evaluate.report import check_report_path, wer_table, write_report
    from macasr.evaluate.run import decoding_options, evaluate_sets, named_sets
    from macasr.train.checkpoint import restore_model

    user_cfg = config_module.load(config) if config else None
    if ckpt is None:
        if user_cfg is None:
            raise fail("give --ckpt CHECKPOINT (or --config CONFIG to use its run folder's best.pt)")
        ckpt = user_cfg.run_dir / "best.pt"
    restored = restore_model(ckpt, device)
    base = user_cfg or restored.config
    overrides = {"eval": base.eval, "datasets": base.datasets, "data.on_bad_clip": on_bad_clip or base.data.on_bad_clip}
    if normalizer:
        overrides["eval.normalizer"] = normalizer
    if batch_size:
        overrides["eval.batch_size"] = batch_size
    overrides |= vad_override(vad)
    # Re-validate so a bad --normalizer or --on-bad-clip is reported like a bad config key.
    cfg = config_module.from_dict(config_module.to_dict(config_module.replace(restored.config, **overrides)), "command line")
    sets = named_sets(cfg, [str(m) for m in manifest or []], dataset or [])
    if report:
        inputs = [Path(p) for paths in sets.values() for p in paths] + [ckpt] + ([config] if config else [])
        check_report_path(report, inputs=inputs)  # before, not after, decoding
    with dataset_progress() as progress:
        scores = evaluate_sets(restored.model, cfg, sets, restored.device, restored.precision, progress)
    for s in scores:
        for line in s.skipped:
            err_console.print(f"[yellow]skipped:[/] {escape(line)}", soft_wrap=True)
        for line in s.warnings:
            err_console.print(f"[yellow]warning:[/] {escape(line)}", soft_wrap=True)
    console.print(wer_table(scores, cfg.eval.normalizer, title=f"WER of {ckpt}"))
    if report:
        extra = {"checkpoint": str(ckpt), "decoding": dataclasses.asdict(decoding_options(cfg))}  # how it was decoded
        json_path, jsonl_path = write_report(report, scores, cfg.eval.normalizer, extra=extra)
        console.print(f"report: {json_path} (per utterance: {jsonl_path})")
    problems = [f"{s.name}: {s.problem}" for s in scores if s.problem]
    if problems:
        raise fail("\n".join(problems))
