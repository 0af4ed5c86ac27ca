"""`macasr transcribe AUDIO... --ckpt best.pt [--format txt|json|srt|vtt] [--output-dir DIR]`.

Inputs are audio files, folders (searched recursively), glob patterns and manifests. Each
transcript is written as soon as its batch is decoded: to stdout, or with --output-dir to one file
per input. A bad input is one line on stderr (and, in JSON, an object with its error); the rest go
on, and the exit status is 1 at the end if any failed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from macasr.cli._common import BatchSizeOpt, NumBeamsOpt, RepeatNgramOpt, CheckpointOpt, DeviceOpt, CheckpointSetOpt, checkpoint_sets, VadOpt, err_console, fail, handle_errors, refuse_clashes, vad_override

if TYPE_CHECKING:
    from macasr.infer.inputs import Source
    from macasr.infer.transcribe import Transcript


class Format(str, Enum):
    txt = "txt"
    json = "json"
    srt = "srt"
    vtt = "vtt"


@contextmanager
def seconds_progress(total: float) -> Iterator[Callable[[float], None]]:
    """A Rich bar on stderr over `total` seconds of audio; yields `advance(seconds)`. stdout is
    left alone (not redirected through the bar): it carries the transcripts. Off when stderr is
    not a terminal (a log file gets the error lines only)."""
    with Progress(TextColumn("[bold]transcribing"), BarColumn(), TextColumn("{task.completed:,.0f}/{task.total:,.0f} s of audio"),
                  TimeRemainingColumn(), console=err_console, transient=True, redirect_stdout=False, redirect_stderr=False,
                  disable=not err_console.is_terminal) as progress:
        task = progress.add_task("transcribe", total=max(total, 1e-9))
        yield lambda seconds: progress.advance(task, seconds)


def _write(source: Source, t: Transcript, fmt: Format, several: bool, out: Path | None) -> None:
    """One input's result: to `out` (a file; JSON also for a failure), or to stdout; its error,
    or a note for a transcript a guard cut (txt), to stderr."""
    from macasr.infer.formats import as_json, render

    if t.error is not None:
        err_console.print(f"[red]error:[/] {escape(t.error)}", soft_wrap=True)
        if fmt is Format.json:  # one object per input, failed ones too: a reader can match them up
            line = json.dumps(as_json(t, source.id), ensure_ascii=False) + "\n"
            if out is None:
                typer.echo(line, nl=False)
            else:
                out.write_text(line, encoding="utf-8")
        return
    text = render(t, fmt.value, source.id)
    if out is not None:
        out.write_text(text, encoding="utf-8")
    elif fmt is Format.txt and several:  # a manifest row by its id: rows may share one file
        typer.echo(f"{source.id if source.id is not None else t.path}\t{t.text}")
    else:
        typer.echo(text, nl=False)
    if fmt is Format.txt and t.guard_note is not None:
        err_console.print(f"[yellow]note:[/] {escape(t.guard_note)}", soft_wrap=True)


@handle_errors
def transcribe(
    audio: Annotated[list[str], typer.Argument(help="Audio files (WAV, FLAC, OGG, MP3, ...; any rate and channels), folders (searched recursively for audio files), glob patterns (quoted: 'talks/**/*.mp3') and manifests (macasr JSONL, lhotse cuts, Shar folders).", show_default=False)],
    ckpt: CheckpointOpt,
    output_format: Annotated[Format, typer.Option("--format", help="txt: the transcript (path<TAB>text for several inputs), with a note on stderr for one a guard cut; json: one object per input (JSON Lines) with `stop` (why decoding stopped: end, repeat, max_tokens) and `segments` (start, end seconds, text), or `error` for an input that failed; srt, vtt: subtitles, one cue per segment.")] = Format.txt,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", help="Write one file per input here, named after it (talk.wav → talk.txt; folders are added to tell apart inputs of the same name), instead of to stdout.", show_default=False)] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Config whose [eval] settings (decoding, vad, batch size, segment length) and [data] allow_commands to use (default: the checkpoint's).", show_default=False)] = None,
    num_beams: NumBeamsOpt = None,
    repeat_ngram_stop: RepeatNgramOpt = None,
    vad: VadOpt = None,
    max_segment_seconds: Annotated[float | None, typer.Option("--max-segment-seconds", help="Longer audio is decoded in speech segments of at most this many seconds, split at pauses (default: [eval] max_segment_seconds).", show_default=False)] = None,
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = "auto",
    sets: CheckpointSetOpt = None,
) -> None:
    """Transcribe audio; exit status 1 if any input failed."""
    from macasr import config as config_module, config_overrides
    from macasr.infer.inputs import expand, output_names
    from macasr.infer.transcribe import Transcriber
    from macasr.train.checkpoint import restore_model

    sets = checkpoint_sets(sets, "transcribe")
    given = {"num_beams": num_beams, "repeat_ngram_stop": repeat_ngram_stop, "max_segment_seconds": max_segment_seconds, "batch_size": batch_size}
    options = {f"eval.{key}": value for key, value in given.items() if value is not None}
    refuse_clashes(options, sets)
    user_cfg = config_overrides.load(config, sets) if config else None
    restored = restore_model(ckpt, device, overrides=sets)
    base = user_cfg or restored.config
    overrides = {"eval": base.eval, "data.allow_commands": base.data.allow_commands} | vad_override(vad)
    overrides |= options
    # Re-validate so a bad option is reported like a bad config key.
    cfg = config_module.from_dict(config_module.to_dict(config_module.replace(restored.config, **overrides)), "command line")
    sources = expand(audio, cfg.data.allow_commands)
    if output_format in (Format.srt, Format.vtt) and output_dir is None and len(sources) > 1:
        raise fail(f"--format {output_format.value} writes one subtitle file per input: give --output-dir DIR for {len(sources)} inputs")
    names = output_names(sources) if output_dir is not None else []
    transcriber = Transcriber(restored.model, cfg, restored.device, restored.precision)
    failed = written = 0
    with seconds_progress(sum(s.duration for s in sources)) as advance:
        for k, (source, t) in enumerate(zip(sources, transcriber.stream(sources, on_progress=advance), strict=True)):
            out = None
            if output_dir is not None and (t.error is None or output_format is Format.json):
                out = output_dir / f"{names[k]}.{output_format.value}"
                out.parent.mkdir(parents=True, exist_ok=True)
                written += 1
            _write(source, t, output_format, len(sources) > 1, out)
            failed += t.error is not None
    if output_dir is not None:
        err_console.print(f"{written} file{'s' * (written != 1)} written to {escape(str(output_dir))}", soft_wrap=True)
    if failed:
        raise typer.Exit(1)
