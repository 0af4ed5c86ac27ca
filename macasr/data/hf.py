"""A Hugging Face dataset on this machine → FLAC files + a lhotse CutSet manifest.

Offline only: a folder written by `save_to_disk`, a local dataset folder (`load_dataset(folder)`),
or a hub name already in the local datasets cache; nothing is downloaded (HF_DATASETS_OFFLINE).
Audio is taken undecoded (`Audio(decode=False)`: the stored bytes or path), so no audio decoder
besides soundfile is needed: embedded bytes are written out as FLAC, paths are referenced.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from macasr.errors import DataError
from macasr.fileio import atomic_open

INSTALL_HINT = "reading Hugging Face datasets needs the `datasets` package: pip install 'macasr[hf]'"


def _datasets() -> Any:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise DataError(INSTALL_HINT) from None
    datasets.config.HF_DATASETS_OFFLINE = True  # also when datasets was imported before
    datasets.config.HF_HUB_OFFLINE = True
    return datasets


def load_split(name_or_path: str, split: str) -> Any:
    """One split of a local dataset; DataError naming the splits there are, or why it cannot load."""
    datasets = _datasets()
    folder = Path(name_or_path).expanduser()
    try:
        if folder.is_dir() and ((folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()):
            loaded = datasets.load_from_disk(str(folder))
        else:
            loaded = datasets.load_dataset(str(folder) if folder.is_dir() else name_or_path)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as e:
        where = "folder" if folder.is_dir() else "name (offline: only datasets in the local cache)"
        raise DataError(f"{name_or_path}: cannot load this dataset {where} ({type(e).__name__}: {e})") from None
    if isinstance(loaded, datasets.Dataset):
        return loaded  # save_to_disk of one split: --split is its name only
    if split not in loaded:
        raise DataError(f"{name_or_path}: no split {split!r} (it has {', '.join(loaded)})")
    return loaded[split]


def _check_columns(dataset: Any, source: str, columns: dict[str, str | None]) -> None:
    have = list(dataset.column_names)
    for option, column in columns.items():
        if column is not None and column not in have:
            raise DataError(f"{source}: {option} {column!r} is not a column (it has {', '.join(have)})")


def _audio_file(value: Any, row: int, audio_dir: Path, cut_id: str, source: str) -> Path:
    """One undecoded audio value → a file on disk: embedded bytes (or an array) written as FLAC,
    an existing path used as is."""
    import numpy as np
    import soundfile as sf

    if isinstance(value, str):
        value = {"path": value}
    if not isinstance(value, dict):
        raise DataError(f"{source}: row {row}: audio is a {type(value).__name__}; expected an Audio column or a path")
    if value.get("bytes") is None and value.get("array") is None:
        path = Path(str(value.get("path") or ""))
        if path.is_file():
            return path.resolve()
        raise DataError(f"{source}: row {row}: audio has no bytes and its path {str(path)!r} is not a file here")
    try:
        if value.get("bytes") is not None:
            samples, rate = sf.read(io.BytesIO(value["bytes"]), dtype="float32", always_2d=True)
        else:
            samples, rate = np.asarray(value["array"], dtype="float32"), int(value["sampling_rate"])
    except (RuntimeError, sf.LibsndfileError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"{source}: row {row}: cannot decode audio ({e})") from None
    target = audio_dir / f"{cut_id}.flac"
    with atomic_open(target) as f:
        sf.write(f, samples, rate, format="FLAC", subtype="PCM_16")
    return target


def prepare_hf(name_or_path: str, out_dir: Path, *, split: str, audio_column: str = "audio", text_column: str = "text",
               speaker_column: str | None = None, name: str | None = None) -> Any:
    """Write `OUT_DIR/<name>_<split>.jsonl.gz` and its audio under `OUT_DIR/<name>_<split>/`;
    returns the SplitSummary."""
    from macasr.data.prepare import SplitSummary, dataset_name, manifest_path, write_cuts

    dataset = load_split(name_or_path, split)
    _check_columns(dataset, name_or_path, {"--audio-column": audio_column, "--text-column": text_column,
                                            "--speaker-column": speaker_column})
    datasets = _datasets()
    if isinstance(dataset.features[audio_column], datasets.Audio):
        dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
    name = name or Path(name_or_path.rstrip("/")).name
    summary = SplitSummary(dataset_name(name, split), manifest_path(out_dir, name, split))
    audio_dir = out_dir / f"{name}_{split}"
    audio_dir.mkdir(parents=True, exist_ok=True)
    return write_cuts(_cuts(dataset, name_or_path, audio_dir, dataset_name(name, split), audio_column, text_column, speaker_column), summary)


def _cuts(dataset: Any, source: str, audio_dir: Path, prefix: str, audio_column: str, text_column: str,
          speaker_column: str | None) -> Any:
    from lhotse import MonoCut, Recording, SupervisionSegment

    for row, example in enumerate(dataset):
        text = example[text_column]
        if not isinstance(text, str):
            raise DataError(f"{source}: row {row}: {text_column} = {text!r}; expected the transcript as a string")
        cut_id = f"{prefix}-{row:08d}"
        recording = Recording.from_file(_audio_file(example[audio_column], row, audio_dir, cut_id, source), recording_id=cut_id)
        speaker = example[speaker_column] if speaker_column else None
        supervision = SupervisionSegment(id=cut_id, recording_id=cut_id, start=0.0, duration=recording.duration,
                                         channel=0, text=text, speaker=None if speaker is None else str(speaker))
        # channel 0 of a multi-channel file, as Kaldi and the recipes do without a channel named
        cut = MonoCut(id=cut_id, start=0.0, duration=recording.duration, channel=0, recording=recording,
                      supervisions=[supervision])
        yield cut
