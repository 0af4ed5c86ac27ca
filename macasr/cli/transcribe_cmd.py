"""`macasr transcribe AUDIO... --ckpt best.pt`."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from macasr.cli._common import BatchSizeOpt, CheckpointOpt, DeviceOpt, err_console, handle_errors


class Format(str, Enum):
    txt = "txt"
    json = "json"


@handle_errors
def transcribe(
    audio: Annotated[list[Path], typer.Argument(help="Audio files: WAV, FLAC, OGG, MP3; any rate and channels.", show_default=False)],
    ckpt: CheckpointOpt,
    output_format: Annotated[Format, typer.Option("--format", help="txt: the transcript (path<TAB>text for several files), with a note on stderr for one a guard cut; json: one object per file, with `stop` (why decoding stopped: end, repeat, max_tokens) or, for a file that failed, `error`.")] = Format.txt,
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Print one transcript per file; exit status 1 if any file failed."""
    from macasr.infer.transcribe import Transcriber

    transcriber = Transcriber.from_checkpoint(ckpt, device)
    results = transcriber.transcribe(audio, batch_size)
    for r in results:
        if output_format is Format.json:  # one object per input, failed ones too: a reader can match them up
            fields = {"audio": r.path, "text": r.text, "duration": r.duration, "stop": r.stop}
            typer.echo(json.dumps(fields if r.error is None else {"audio": r.path, "text": None, "error": r.error}, ensure_ascii=False))
        if r.error is not None:
            err_console.print(f"[red]error:[/] {escape(r.error)}", soft_wrap=True)
        elif output_format is Format.txt:
            typer.echo(r.text if len(audio) == 1 else f"{r.path}\t{r.text}")
            if r.guard_note is not None:
                err_console.print(f"[yellow]note:[/] {escape(r.guard_note)}", soft_wrap=True)
    if any(r.error is not None for r in results):
        raise typer.Exit(1)
