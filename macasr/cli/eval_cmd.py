"""`macasr eval --ckpt best.pt --manifest test.jsonl [--dataset NAME] [--report out.json]`,
and `macasr eval --compare a.json b.json` (two reports, no model).

Exit status 1 when any dataset has no WER (no clip could be read, or every reference is empty
after normalization), after the table and the report are written. Under
`torchrun --nproc-per-node N -m macasr eval ...` each rank decodes a share of every dataset and
rank 0 alone prints and writes the scores of the whole datasets.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from macasr.cli._common import BatchSizeOpt, NumBeamsOpt, RepeatNgramOpt, DeviceOpt, CheckpointSetOpt, checkpoint_sets, VadOpt, console, err_console, fail, handle_errors, refuse_clashes, vad_override
from macasr.errors import MacasrError

if TYPE_CHECKING:  # the CLI imports nothing heavy before a command runs
    from macasr.config import Config
    from macasr.evaluate.wer import DatasetScore


@contextmanager
def dataset_progress() -> Iterator[Callable[[str, int], Callable[[Any], None]]]:
    """A Rich bar per dataset; yields the `progress(name, total)` hook evaluate_sets takes."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as progress:

        def start(name: str, total: int) -> Callable[[Any], None]:
            task = progress.add_task(escape(name), total=total)
            return lambda batch: progress.advance(task, len(batch) + len(batch.skipped) + len(batch.no_speech))

        yield start


def _print_comparison(paths: tuple[Path, Path]) -> None:
    """The WER change per dataset and the utterances that changed most, from two reports."""
    from macasr.evaluate.compare import changes_table, compare_reports, comparison_table, load_report

    comparison = compare_reports(load_report(paths[0]), load_report(paths[1]))
    for note in comparison.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    console.print(comparison_table(comparison))
    for name, changes in comparison.changed.items():
        if changes:
            console.print(changes_table(name, changes))
        else:
            console.print(f"{escape(name)}: no utterance's word errors changed")


def _decoding_overrides(num_beams: int | None, repeat_ngram_stop: int | None, batch_size: int | None,
                        batch_seconds: float | None) -> dict[str, Any]:
    """[eval] keys the decoding options replace: --batch-size means clips per batch (batch_seconds 0)."""
    if batch_size and batch_seconds is not None:
        raise fail("give --batch-size (clips per batch) or --batch-seconds (audio seconds per batch), not both")
    overrides: dict[str, Any] = {}
    if num_beams:
        overrides["eval.num_beams"] = num_beams
    if repeat_ngram_stop is not None:
        overrides["eval.repeat_ngram_stop"] = repeat_ngram_stop
    if batch_size:
        overrides["eval.batch_size"] = batch_size
        overrides["eval.batch_seconds"] = 0.0
    if batch_seconds is not None:
        overrides["eval.batch_seconds"] = batch_seconds
    return overrides


def _print_and_write(scores: list[DatasetScore], cfg: Config, ckpt: Path, report: Path | None, overrides: list[str]) -> None:
    """Rank 0's part: the clip lines, both tables, the report (with the `--set` flags the
    checkpoint's config was changed by, "KEY=VALUE"); exit status 1 for a dataset without WER."""
    from macasr.evaluate.report import rates_table, wer_table, write_report
    from macasr.evaluate.run import decoding_options

    for s in scores:
        for line in s.skipped:
            err_console.print(f"[yellow]skipped:[/] {escape(line)}", soft_wrap=True)
        for line in s.warnings:
            err_console.print(f"[yellow]warning:[/] {escape(line)}", soft_wrap=True)
    console.print(wer_table(scores, cfg.eval.normalizer, title=f"WER of {ckpt}"))
    console.print(rates_table(scores))
    if report:
        extra = {"checkpoint": str(ckpt), "decoding": dataclasses.asdict(decoding_options(cfg)), "overrides": overrides}  # how it was decoded
        json_path, jsonl_path = write_report(report, scores, cfg.eval.normalizer, extra=extra)
        console.print(f"report: {json_path} (per utterance: {jsonl_path})")
    problems = [f"{s.name}: {s.problem}" for s in scores if s.problem]
    if problems:
        raise fail("\n".join(problems))


@handle_errors
def evaluate(
    ckpt: Annotated[Path | None, typer.Option("--ckpt", help="Checkpoint to score (default: best.pt of --config's run folder).", show_default=False)] = None,
    manifest: Annotated[list[Path] | None, typer.Option("--manifest", metavar="<path>", help="JSONL manifest to score (repeatable).", show_default=False)] = None,
    dataset: Annotated[list[str] | None, typer.Option("--dataset", metavar="<name>", help="A dataset named in [datasets.*] (repeatable; default: [eval] test_sets).", show_default=False)] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Config whose [eval] settings and datasets, and [data] on_bad_clip, to use (default: the checkpoint's).", show_default=False)] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write the JSON report here (+ .utterances.jsonl beside it).", show_default=False)] = None,
    normalizer: Annotated[str | None, typer.Option("--normalizer", help="whisper, english, basic or none (default: [eval] normalizer).", show_default=False)] = None,
    on_bad_clip: Annotated[str | None, typer.Option("--on-bad-clip", help="An unreadable clip: skip (and count it) or error (stop) (default: [data] on_bad_clip).", show_default=False)] = None,
    num_beams: NumBeamsOpt = None,
    repeat_ngram_stop: RepeatNgramOpt = None,
    batch_size: BatchSizeOpt = None,
    batch_seconds: Annotated[float | None, typer.Option("--batch-seconds", help="Batch by audio: up to this many seconds of padded audio per batch, instead of --batch-size clips (default: [eval] batch_seconds; 0 = by clips).", show_default=False)] = None,
    compare: Annotated[tuple[Path, Path] | None, typer.Option("--compare", metavar="A.json B.json", help="Compare two --report files (A.json B.json): WER change per dataset and the utterances that changed most; decodes nothing. Whole training runs: macasr compare RUN_DIR....", show_default=False)] = None,
    vad: VadOpt = None,
    device: DeviceOpt = "auto",
    sets: CheckpointSetOpt = None,
) -> None:
    """Decode test sets and print a WER table per dataset and overall."""
    if compare:
        given = [flag for flag, value in (("--ckpt", ckpt), ("--manifest", manifest), ("--dataset", dataset), ("--config", config),
                                          ("--report", report), ("--normalizer", normalizer), ("--on-bad-clip", on_bad_clip),
                                          ("--num-beams", num_beams), ("--repeat-ngram-stop", repeat_ngram_stop), ("--batch-size", batch_size),
                                          ("--batch-seconds", batch_seconds), ("--set", sets)) if value not in (None, [], ())]
        if given:
            raise fail(f"--compare reads two reports and decodes nothing: drop {', '.join(given)}")
        return _print_comparison(compare)
    from macasr import config as config_module, config_overrides
    from macasr.evaluate.report import check_report_path
    from macasr.evaluate.run import evaluate_sets, named_sets
    from macasr.model.build import resolve_device
    from macasr.train.checkpoint import restore_model
    from macasr.train.ddp import RankShare
    from macasr.train.distributed import current_world, init_distributed, rank_device, teardown

    sets = checkpoint_sets(sets, "eval")
    decoding = _decoding_overrides(num_beams, repeat_ngram_stop, batch_size, batch_seconds)
    refuse_clashes(decoding | ({"eval.normalizer": normalizer} if normalizer else {}), sets)
    user_cfg = config_overrides.load(config, sets) if config else None
    if ckpt is None:
        if user_cfg is None:
            raise fail("give --ckpt CHECKPOINT (or --config CONFIG to use its run folder's best.pt)")
        ckpt = user_cfg.run_dir / "best.pt"
    world = current_world()  # under torchrun: this rank's GPU
    restored = restore_model(ckpt, str(rank_device(resolve_device(device, "--device"), world)), overrides=sets)
    base = user_cfg or restored.config
    overrides = {"eval": base.eval, "datasets": base.datasets, "data.on_bad_clip": on_bad_clip or base.data.on_bad_clip}
    if normalizer:
        overrides["eval.normalizer"] = normalizer
    overrides |= decoding
    overrides |= vad_override(vad)
    # Re-validate so a bad --normalizer or --on-bad-clip is reported like a bad config key.
    cfg = config_module.from_dict(config_module.to_dict(config_module.replace(restored.config, **overrides)), "command line")
    sets = named_sets(cfg, [str(m) for m in manifest or []], dataset or [])
    if report:  # on every rank, so that all stop together
        inputs = [Path(p) for paths in sets.values() for p in paths] + [ckpt] + ([config] if config else [])
        check_report_path(report, inputs=inputs)  # before, not after, decoding
    world = init_distributed(restored.device.type, cfg.train.distributed_timeout_s)
    try:
        with dataset_progress() if world.is_main else contextlib.nullcontext(None) as progress:
            scores = evaluate_sets(restored.model, cfg, sets, restored.device, restored.precision,
                                   progress if world.is_main else None, share=RankShare(world) if world.distributed else None)
    except MacasrError as e:  # raised without leaving the group, as training does (NCCL's teardown may wait on the others)
        if world.distributed and not str(e).startswith("rank "):  # which of the ranks printing it failed
            e.args = (f"rank {world.rank} of {world.size}: {e}",)
        raise
    teardown()
    if not world.is_main:  # rank 0 prints and writes the whole datasets' scores
        raise typer.Exit(1 if any(s.problem for s in scores) else 0)
    _print_and_write(scores, cfg, ckpt, report, restored.overrides)
