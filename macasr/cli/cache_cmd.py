"""`macasr cache build CONFIG.toml [--datasets NAME...] [--rebuild]`: encode the training and
validation cuts once with the frozen encoder, into the folder `[data] cache` names."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from macasr.cli._common import DeviceOpt, SetOpt, console, handle_errors, typer_app

if TYPE_CHECKING:
    from rich.console import Console

    from macasr.config import Config
    from macasr.data.cache import SourceReport

app = typer_app(help="Frozen-encoder feature cache: encode the training and validation cuts once.", no_args_is_help=True)


def _report_table(reports: dict) -> Table:
    table = Table(title="Feature cache")
    for column in ("Dataset", "Cuts cached", "Encoded now", "Shards kept", "Skipped"):
        table.add_column(column, justify="left" if column == "Dataset" else "right")
    for name, r in reports.items():
        table.add_row(escape(name), f"{r.cuts:,}", f"{r.encoded:,}", f"{r.shards_kept:,}", f"{len(r.skipped):,}")
    return table


@app.command("build")
@handle_errors
def build(
    config: Annotated[Path, typer.Argument(help="TOML config: its encoder, [data] train/valid and [data] cache folder.")],
    datasets: Annotated[list[str] | None, typer.Option("--datasets", help="Cache only these sources (names from [data] train/valid; repeat the option).", show_default=False)] = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Delete frames built with another cache key (or, with a current key, the named sources) and encode again.")] = False,
    device: DeviceOpt = "auto",
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Clips encoded together (default: [eval] batch_size).", min=1, show_default=False)] = None,
    shard_size: Annotated[int, typer.Option("--shard-size", help="Clips per shard: the unit that is written atomically and resumed.", min=1)] = 1000,
    sets: SetOpt = None,
) -> None:
    """Run the frozen encoder once over the training and validation cuts and store the frames.

    Resumes where a stopped build left off; refuses a cache built with another encoder, dtype,
    feature settings, window or layer (naming the field) unless --rebuild is given."""
    from macasr import config_overrides
    from macasr.errors import ConfigError

    cfg = config_overrides.load(config, sets)  # refuses a cache with augmentation or a training encoder (Config.validate)
    if not cfg.data.cache:
        raise ConfigError(f"{config}: [data] cache: empty; set it to the folder the frames go to, e.g. cache = \"cache/whisper\"")
    reports = encode_sources(cfg, device, datasets, rebuild=rebuild, batch_size=batch_size, shard_size=shard_size)
    for r in reports.values():
        for line in r.skipped:
            console.print(f"[yellow]skipped:[/] {escape(line)}", soft_wrap=True)
    console.print(_report_table(reports))
    console.print(escape(f"Frames in {Path(cfg.data.cache).resolve()}; training reads them while [data] cache names it."))


def encode_sources(cfg: Config, device: str = "auto", datasets: list[str] | None = None, *, rebuild: bool = False,
                   batch_size: int | None = None, shard_size: int = 1000, out: Console = console) -> dict[str, SourceReport]:
    """Encode `cfg`'s [data] train and valid sources (or only `datasets`) into `[data] cache`, with
    a progress bar on `out`; returns a report per source. `macasr demo` calls it too. Raises ConfigError
    or DataError (a stale cache key, a bad clip with on_bad_clip = "error")."""
    import torch

    from macasr.data.cache import CutEncoder, build_cache, cache_key, cache_sources, prepare_root
    from macasr.data.manifest import open_cuts
    from macasr.model.build import DTYPES, resolve_device, resolve_precision
    from macasr.model.encoders import ENCODERS

    sources = cache_sources(cfg, datasets)
    dev = resolve_device(device, "--device")
    precision = resolve_precision(cfg.train.precision, dev)  # the encoder's dtype in training, part of the key
    encoder = ENCODERS.build(cfg.model.encoder, dtype=DTYPES[precision]).to(dev)
    key = cache_key(cfg, encoder)
    prepare_root(Path(cfg.data.cache), key, list(sources), rebuild)  # a stale key fails before the long work
    total = sum(1 for manifests in sources.values() for m in manifests for _ in open_cuts(m))
    columns = (TextColumn("encoding"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with torch.inference_mode(), Progress(*columns, console=out) as progress:
        task = progress.add_task("encoding", total=total)
        return build_cache(
            cfg.data.cache, key, sources, functools.partial(open_cuts, allow_commands=cfg.data.allow_commands),
            CutEncoder(encoder, dev, batch_size or cfg.eval.batch_size, dtype=key["dtype"]),
            rebuild=False, shard_size=shard_size, on_bad_clip=cfg.data.on_bad_clip, advance=lambda n: progress.advance(task, n),
        )
