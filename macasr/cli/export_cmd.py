"""`macasr export CKPT --out DIR [--report report.json] [--merge-lora] [--force]` (docs/export.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from macasr.cli._common import CheckpointSetOpt, checkpoint_sets, console, err_console, handle_errors


@handle_errors
def export(
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint to export (best.pt, last.pt).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Bundle folder to write; it must be new or empty unless --force.", show_default=False)],
    report: Annotated[Path | None, typer.Option("--report", help="An eval report (macasr eval --report) whose WER table goes into the model card.", show_default=False)] = None,
    merge_lora: Annotated[bool, typer.Option("--merge-lora", help="Also write the LLM with its LoRA adapters merged in (llm_merged/, save_pretrained).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an earlier bundle in --out (a folder of other files is never replaced).")] = False,
    sets: CheckpointSetOpt = None,
) -> None:
    """Write a checkpoint as a self-contained bundle: config, safetensors weights, PEFT adapters, model card."""
    from macasr.infer.card import read_report, scored_elsewhere
    from macasr.infer.export import export_bundle, plugin_notes

    sets = checkpoint_sets(sets, "export")
    if report is not None and (elsewhere := scored_elsewhere(read_report(report), ckpt)):
        err_console.print(f"[yellow]warning:[/] --report {escape(str(report))}: {escape(elsewhere)}", soft_wrap=True)
    path = export_bundle(ckpt, out, report=report, merge_lora=merge_lora, force=force, overrides=sets)
    files = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    console.print(f"bundle: {escape(str(path))} ({', '.join(escape(f) for f in files)})", soft_wrap=True)
    for note in plugin_notes(path):
        err_console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
