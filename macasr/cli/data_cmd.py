"""`macasr data prepare|corpora|shar|stats`: parsing and printing only (macasr.data does the work)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from macasr.cli._common import SetOpt, console, err_console, fail, handle_errors, typer_app

app = typer_app(no_args_is_help=True, help="Prepare corpora as manifests, shard them, and describe them.")


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:,.2f}"


def _skipped(reasons: dict[str, int]) -> str:
    return "; ".join(f"{n:,} {why}" for why, n in reasons.items()) or "0"


@app.command("prepare")
@handle_errors
def prepare(
    corpus: Annotated[str, typer.Argument(help="librispeech, commonvoice, fisher-english, switchboard, kaldi, hf, or any lhotse recipe (`macasr data corpora`).", show_default=False)],
    source: Annotated[str, typer.Argument(help="The corpus folder as released (kaldi: the data folder; hf: a saved dataset folder or a cached dataset name).", show_default=False)],
    out_dir: Annotated[Path, typer.Argument(help="Where the manifests (<corpus>_<split>.jsonl.gz) are written.", show_default=False)],
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="KEY=VALUE passed to the lhotse recipe (e.g. languages=en); repeatable.", show_default=False)] = None,
    allow_pipes: Annotated[bool, typer.Option("--allow-pipes", help="kaldi: run wav.scp commands other than plain sph2pipe lines (they execute shell commands).")] = False,
    split: Annotated[str, typer.Option("--split", help="hf: the split to prepare.")] = "train",
    audio_column: Annotated[str, typer.Option("--audio-column", help="hf: the column holding audio (an Audio feature or paths).")] = "audio",
    text_column: Annotated[str, typer.Option("--text-column", help="hf: the column holding transcripts.")] = "text",
    speaker_column: Annotated[str | None, typer.Option("--speaker-column", help="hf: the column naming speakers.", show_default=False)] = None,
    name: Annotated[str | None, typer.Option("--name", help="kaldi, hf: manifest and dataset name (default: the folder's name).", show_default=False)] = None,
) -> None:
    """Write lhotse CutSet manifests for a corpus laid out as released, and the [datasets.*] lines to paste."""
    from macasr.data.prepare import prepare as run

    summaries = run(corpus, source, out_dir, options=option or [], allow_pipes=allow_pipes, split=split,
                    audio_column=audio_column, text_column=text_column, speaker_column=speaker_column, name=name)
    table = Table(title=f"{corpus} → {out_dir}")
    for column in ("split", "utterances", "hours", "speakers", "skipped (why)"):
        table.add_column(column, justify="right" if column in ("utterances", "hours", "speakers") else "left")
    for s in summaries:
        table.add_row(escape(s.name), f"{s.cuts:,}", _hours(s.seconds), f"{len(s.speakers):,}" if s.speakers else "-",
                      escape(_skipped(s.skipped)))
    console.print(table)
    for s in summaries:
        if s.note:
            err_console.print(f"[yellow]note:[/] {escape(s.note)}", soft_wrap=True)
    console.print("\nAdd to your config (text / drop_annotations: docs/data.md, training targets):\n")
    console.print(escape("\n\n".join(s.toml() for s in summaries)), soft_wrap=True)


@app.command("corpora")
def corpora() -> None:
    """List the corpus names `data prepare` accepts (lhotse's recipes, kaldi and hf)."""
    from macasr.data.prepare import corpus_names

    for corpus_name in corpus_names():
        typer.echo(corpus_name)


@app.command("shar")
@handle_errors
def shar(
    in_manifest: Annotated[Path, typer.Argument(help="A macasr JSONL, lhotse CutSet manifest or Shar folder.", show_default=False)],
    out_dir: Annotated[Path, typer.Argument(help="A new (or empty) folder for the shards.", show_default=False)],
    shard_size: Annotated[int, typer.Option("--shard-size", help="Cuts per shard.", min=1)] = 1000,
    audio_format: Annotated[str, typer.Option("--audio-format", help="Audio encoding in the shards: flac, wav, mp3, opus.")] = "flac",
) -> None:
    """Write lhotse Shar shards (cuts + re-encoded audio) for sequential reads from shared storage."""
    from macasr.data.manifest import manifest_summary
    from macasr.data.shar import write_shar

    total = manifest_summary(in_manifest).cuts  # metadata only: cheap beside re-encoding the audio
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task("cuts", total=total)
        summary = write_shar(in_manifest, out_dir, shard_size=shard_size, audio_format=audio_format,
                             on_cut=lambda: progress.advance(task))
    console.print(f"[green]wrote[/] {summary.shards:,} shard(s), {summary.cuts:,} cuts, {_hours(summary.seconds)} h "
                  f"to {escape(str(out_dir))}")
    if summary.skipped:
        err_console.print(f"[yellow]skipped:[/] {escape(_skipped(summary.skipped))}, e.g.", soft_wrap=True)
        for example in summary.examples:
            err_console.print(f"  {escape(example)}", soft_wrap=True)


@app.command("stats")
@handle_errors
def stats(
    manifests: Annotated[list[str], typer.Argument(help="Manifests (macasr JSONL, lhotse CutSet, Shar folders), or with --config also [datasets.*] names.", show_default=False)],
    config: Annotated[Path | None, typer.Option("--config", help="Config whose [model.llm] tokenizer counts tokens per second of each dataset's training targets (checked against [eval] max_tokens_per_second).", show_default=False)] = None,
    sets: SetOpt = None,
) -> None:
    """Utterances, hours, speakers, durations, transcript lengths and tokens per second of audio."""
    from macasr import config_overrides
    from macasr.data.stats import config_stats, coverage_note, manifest_stats

    if sets and not config:
        raise fail("--set changes a config: give --config CONFIG too")
    cfg = config_overrides.load(config, sets) if config else None
    results = config_stats(cfg, str(config), manifests) if cfg else [manifest_stats(m) for m in manifests]
    table = Table(title="manifests")
    table.add_column("")
    for r in results:
        table.add_column(escape(r.label), justify="right")
    rows: list[tuple[str, list[str]]] = [
        ("utterances", [f"{r.cuts:,}" for r in results]),
        ("hours", [_hours(r.seconds) for r in results]),
        ("speakers", [f"{r.speakers:,}" if r.speakers else "-" for r in results]),
    ]
    rows += [(f"duration {k} (s)", [f"{r.duration[k]:.2f}" for r in results]) for k in ("p5", "p50", "p95", "max")]
    rows += [(f"text chars {k}", [f"{r.chars[k]:,.0f}" for r in results]) for k in ("p50", "p95", "max")]
    if cfg:
        rows += [(f"tokens/s {k}", [f"{r.tokens_per_second[k]:.2f}" for r in results]) for k in ("p50", "p95", "p99", "max")]  # type: ignore[index]
    for label, values in rows:
        table.add_row(label, *values)
    console.print(table)
    if not cfg:
        err_console.print("[yellow]note:[/] pass --config to count tokens per second under its LLM tokenizer", soft_wrap=True)
        return
    cap = cfg.eval.max_tokens_per_second
    notes = [n for r in results if (n := coverage_note(r, cap))]
    for note in notes:
        err_console.print(f"[yellow]warning:[/] {escape(note)}", soft_wrap=True)
    if not notes:
        console.print(f"[eval] max_tokens_per_second = {cap:g} covers every clip's target (with max_tokens_base)", markup=False)
