"""`macasr data shar`: any manifest → lhotse Shar shards for sequential reads from shared storage.

Each shard (`cuts.NNNNNN.jsonl.gz` + `recording.NNNNNN.tar`, audio re-encoded, FLAC by default) is
written in a scratch folder beside OUT_DIR and renamed into it when complete, so a reader never
sees a half-written shard (lhotse's Shar reader takes every file in the folder as a field, so the
scratch folder cannot live inside it).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from macasr.data.manifest import open_cuts
from macasr.errors import DataError

AUDIO_FORMATS = ("flac", "wav", "mp3", "opus")
MAX_EXAMPLES = 5


@dataclasses.dataclass
class SharSummary:
    out_dir: Path
    shards: int = 0
    cuts: int = 0
    seconds: float = 0.0
    skipped: Counter[str] = dataclasses.field(default_factory=Counter)  # reason → cuts
    examples: list[str] = dataclasses.field(default_factory=list)  # the first few "ID: why"

    def skip(self, reason: str, cut_id: str, why: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{cut_id}: {why}")


def _why(error: Exception) -> str:
    """An exception as one line (lhotse's loading errors span several), cut at 200 characters."""
    line = " ".join(str(error).split()) or type(error).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _write_shard(cuts: list[Any], work: Path, index: int, audio_format: str, summary: SharSummary) -> list[Path]:
    """One shard into `work`; cuts whose audio cannot be read are skipped and counted by reason."""
    from lhotse.shar import SharWriter

    with SharWriter(work, fields={"recording": audio_format}, shard_size=None, shard_suffix=f".{index:06d}") as writer:
        for cut in cuts:
            try:
                writer.write(cut)
            except Exception as e:  # noqa: BLE001 - lhotse raises many kinds for unreadable audio
                summary.skip("audio not readable", cut.id, _why(e))
                continue
            summary.cuts += 1
            summary.seconds += cut.duration
    return [Path(p) for paths in writer.output_paths.values() for p in paths]


def _publish(files: list[Path], out_dir: Path) -> None:
    """Rename a finished shard's files into `out_dir`, the cuts manifest last (readers find shards by it)."""
    for f in sorted(files, key=lambda p: p.name.startswith("cuts.")):
        os.replace(f, out_dir / f.name)


def write_shar(in_manifest: Path, out_dir: Path, *, shard_size: int = 1000, audio_format: str = "flac",
               on_cut: Callable[[], None] | None = None) -> SharSummary:
    """Write `in_manifest` (anything `open_cuts` reads) as Shar shards of `shard_size` cuts."""
    from macasr.data.kaldi import lhotse_reads_sphere

    if shard_size < 1:
        raise DataError(f"--shard-size {shard_size}: expected a positive number of cuts per shard")
    if audio_format not in AUDIO_FORMATS:
        raise DataError(f"--audio-format {audio_format!r}: expected one of {', '.join(AUDIO_FORMATS)}")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise DataError(f"{out_dir}: not empty; Shar shards go into a new or empty folder")
    cuts = open_cuts(in_manifest)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = SharSummary(out_dir)
    work = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
    try:
        with lhotse_reads_sphere():
            batch: list[Any] = []
            for cut in cuts:
                if problem := (cut.custom or {}).get("problem"):
                    summary.skip("bad clip", cut.id, str(problem))
                else:
                    batch.append(cut)
                if on_cut:
                    on_cut()
                if len(batch) == shard_size:
                    _flush(batch, work, audio_format, summary)
            if batch:
                _flush(batch, work, audio_format, summary)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if summary.cuts == 0:
        if created:
            out_dir.rmdir()  # nothing was written: leave no empty folder behind
        raise DataError(f"{in_manifest}: no cut could be written ({', '.join(summary.skipped) or 'the manifest is empty'})")
    return summary


def _flush(batch: list[Any], work: Path, audio_format: str, summary: SharSummary) -> None:
    before = summary.cuts
    files = _write_shard(batch, work, summary.shards, audio_format, summary)
    batch.clear()
    if summary.cuts > before:
        _publish(files, summary.out_dir)
        summary.shards += 1
    else:
        for f in files:
            f.unlink(missing_ok=True)
