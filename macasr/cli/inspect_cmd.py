"""`macasr inspect CKPT INPUT... [--out DIR]`: where the connector's speech embeddings sit
among the LLM's token embeddings (docs/research.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from macasr.cli._common import DeviceOpt, InspectSetOpt, checkpoint_sets, console, err_console, handle_errors

NO_MATPLOTLIB = "heatmaps not drawn: they need matplotlib (pip install 'macasr[plots]'); inspect.json is written all the same"


@handle_errors
def inspect(
    ckpt: Annotated[Path, typer.Argument(metavar="CKPT", help="Training checkpoint (best.pt, last.pt), or a bundle folder written by `macasr export`.", show_default=False)],
    inputs: Annotated[list[str], typer.Argument(metavar="INPUT...", help="Audio files (no reference: nearest tokens and norms only), folders (searched recursively for audio files), glob patterns (quoted: 'clips/**/*.wav') and manifests (macasr JSONL, lhotse cuts, Shar folders) whose transcripts are the references; as `macasr transcribe` takes them.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Folder for inspect.json and one heatmap PNG per utterance with a reference (named after it, with folders added to tell apart inputs of the same name); new or empty unless --force.")] = Path("inspect"),
    max_utterances: Annotated[int, typer.Option("--max-utterances", min=1, help="Inspect at most this many utterances: the first ones, in the order the inputs are given.")] = 20,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Nearest vocabulary tokens kept per speech embedding.")] = 5,
    force: Annotated[bool, typer.Option("--force", help="Replace an earlier inspect's output in --out (its inspect.json and heatmaps; a folder of other files is never replaced).")] = False,
    device: DeviceOpt = "auto",
    sets: InspectSetOpt = None,
) -> None:
    """Per speech embedding: its norm beside the LLM's token embeddings', the nearest vocabulary tokens (cosine), and its similarity to the reference transcript's tokens (heatmap); summary statistics over all the utterances."""
    from macasr.infer.inputs import output_names
    from macasr.infer.inspect import (RESULTS, as_record, check_out, checked_sources, clear_earlier, draw_heatmap, inspect_cut,
                                      reference_of, summary)
    from macasr.train.checkpoint import restore_model

    sets = checkpoint_sets(sets, "inspect")
    # A missing input, an empty pattern or folder, a bad row: one line before the model loads.
    sources = checked_sources(inputs, allow_commands=True, limit=max_utterances)
    check_out(out, force)
    restored = restore_model(ckpt, device, overrides=sets)
    if not restored.config.data.allow_commands:  # then rows whose audio a shell command produces are refused
        sources = checked_sources(inputs, allow_commands=False, limit=max_utterances)
    left_out, sources = len(sources) - max_utterances, sources[:max_utterances]
    try:
        import matplotlib  # noqa: F401
        plots = True
    except ImportError:
        plots = False
    clear_earlier(out)  # only after the model loaded: a failed start leaves the earlier output as it was
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, records = restored.model.tokenizer, []
    for source, name in zip(sources, output_names(sources), strict=True):
        result = inspect_cut(restored.model, source.cut, reference_of(source.cut, source.id is not None),
                             restored.device, restored.precision, top_k)
        heatmap = None
        if result.similarity is not None and plots:
            heatmap = f"{name}.png"
            (out / heatmap).parent.mkdir(parents=True, exist_ok=True)
            draw_heatmap(result, tokenizer, out / heatmap)
        records.append(as_record(result, tokenizer, heatmap))
    stats = summary(records)
    (out / RESULTS).write_text(json.dumps({"checkpoint": str(ckpt), "inputs": inputs, "summary": stats, "utterances": records},
                                          ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    _print(records, stats)
    with_reference = stats["utterances_with_reference"]
    if with_reference == 0:
        err_console.print("[yellow]note:[/] no reference transcript (audio files, not manifest rows): similarity to the "
                          "transcript's tokens and the heatmaps are left out", soft_wrap=True)
    elif with_reference < len(records):
        err_console.print(f"[yellow]note:[/] nearest in transcript is over the {with_reference} of {len(records)} utterances "
                          f"with a reference transcript; the {len(records) - with_reference} audio files without one have "
                          "norms and nearest tokens only", soft_wrap=True)
    if left_out > 0:
        err_console.print(f"[yellow]note:[/] the first {max_utterances} utterance{'s' * (max_utterances != 1)} inspected (--max-utterances); "
                          f"{left_out} more in the inputs were not", soft_wrap=True)
    if with_reference and not plots:
        err_console.print(f"[yellow]note:[/] {escape(NO_MATPLOTLIB)}", soft_wrap=True)
    console.print(f"written to {escape(str(out / RESULTS))}", soft_wrap=True)


def _print(records: list[dict], stats: dict) -> None:
    table = Table(title="speech embeddings vs the LLM's token embeddings")
    table.add_column("utterance", overflow="fold")  # an audio file's id is its path: folded over lines, never cut
    for name in ("embeddings", "norm ratio", "nearest cosine", "nearest in transcript"):
        table.add_column(name, justify="right")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for r in records:
        table.add_row(escape(r["id"]), str(r["speech_embeddings"]), fmt(r["norm_ratio"]), fmt(r["nearest_cosine_mean"]),
                      fmt(r.get("nearest_in_transcript")))
    table.add_section()
    table.add_row("[bold]mean[/]", "", fmt(stats["mean_norm_ratio"]), fmt(stats["mean_nearest_cosine"]), fmt(stats["nearest_in_transcript"]))
    console.print(table)
