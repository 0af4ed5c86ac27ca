"""What `macasr transcribe` and `Transcriber.transcribe` take: audio files, folders (searched
recursively for audio files), glob patterns, manifests (macasr JSONL, lhotse cuts, Shar folders)
and in-memory arrays, each made into `Source`s: one per file, manifest row or array, in order.

An input that cannot be used (a missing file, a pattern that matches nothing, a folder without
audio, an unreadable header, a manifest row marked bad) is a Source with an error, never an
exception: the other inputs are still transcribed.
"""

from __future__ import annotations

import dataclasses
import glob
import io
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import soundfile as sf
from lhotse import MonoCut, Recording, SupervisionSegment
from lhotse.cut import Cut

from macasr.audio import audio_duration
from macasr.errors import DataError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".sph", ".aiff", ".aif", ".au")  # what soundfile reads
MANIFEST_SUFFIXES = (".jsonl", ".jsonl.gz")
GLOB_CHARS = "*?["


@dataclasses.dataclass(frozen=True)
class Source:
    """One thing to transcribe: `name` is what output shows (the audio file, or "<array N>"),
    `key` what an output file is named after (the path without extension, or manifest/cut id),
    `id` the cut id of a manifest row (else None); `cut` is None when `error` says why it cannot be read."""

    name: str
    key: str
    cut: Cut | None = None
    error: str | None = None
    id: str | None = None

    @property
    def duration(self) -> float:
        return self.cut.duration if self.cut is not None else 0.0


def file_cut(path: str, index: int) -> MonoCut:
    """A cut over a whole audio file (all channels, mixed to mono when read), numbered `index`;
    DataError naming the file when it is missing, has no readable header, or is empty."""
    if not Path(path).is_file():
        raise DataError(f"{path}: no such audio file")
    duration = audio_duration(path)  # DataError naming the file when the header cannot be read
    if duration <= 0:
        raise DataError(f"{path}: audio is empty")
    try:
        recording = Recording.from_file(Path(path).resolve(), recording_id=str(index))
    except Exception as e:  # noqa: BLE001 - lhotse's audio backends raise many types
        raise DataError(f"{path}: cannot read audio header ({' '.join(str(e).split())[:200]})") from None
    return _whole(recording, path, index)


def array_cut(samples: Any, rate: Any, index: int) -> MonoCut:
    """In-memory audio (1-D samples, or 2-D (samples, channels) as soundfile gives, or (channels,
    samples) as torchaudio gives: a 2-D array is read with its longer side as time) at `rate` Hz →
    a cut over it (kept as float32 WAV bytes; read, mixed and resampled as files are).
    DataError naming "<array N>" when the array or rate is not usable."""
    name = f"<array {index}>"
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise DataError(f"{name}: sample rate {rate!r}: expected a positive whole number of Hz")
    if hasattr(samples, "detach"):  # a torch tensor
        samples = samples.detach().cpu().numpy()
    array = np.asarray(samples)
    if array.ndim not in (1, 2) or array.shape[0] == 0 or not np.issubdtype(array.dtype, np.number):
        raise DataError(f"{name}: got a {array.dtype} array of shape {array.shape}; expected samples as a non-empty "
                        "1-D array or 2-D (samples, channels)")
    if array.ndim == 2 and array.shape[1] > array.shape[0]:  # (channels, samples): no clip has more channels than samples
        array = array.T
    buffer = io.BytesIO()
    try:
        sf.write(buffer, array.astype(np.float32), int(rate), format="WAV", subtype="FLOAT")
    except (sf.LibsndfileError, ValueError, TypeError) as e:
        raise DataError(f"{name}: cannot be stored as audio ({' '.join(str(e).split())[:200]}): a {array.dtype} array of "
                        f"shape {array.shape} at {rate} Hz") from None
    return _whole(Recording.from_bytes(buffer.getvalue(), recording_id=str(index)), name, index)


def _whole(recording: Recording, name: str, index: int) -> MonoCut:
    supervision = SupervisionSegment(id=str(index), recording_id=recording.id, start=0.0, duration=recording.duration, text="")
    return MonoCut(id=name, start=0.0, duration=recording.duration, channel=recording.channel_ids,
                   recording=recording, supervisions=[supervision], custom={"index": index})


def _is_manifest(path: Path) -> bool:
    return path.name.endswith(MANIFEST_SUFFIXES) or (path.is_dir() and any(path.glob("cuts.*.jsonl*")))


def _audio_files(folder: Path) -> list[Path]:
    """The audio files under `folder` (any depth), by extension, in sorted order."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())


def _file_source(path: Path) -> Source:
    key = str(path.resolve().with_suffix(""))
    try:
        return Source(str(path), key, file_cut(str(path), 0))
    except DataError as e:
        return Source(str(path), key, error=str(e))


def _manifest_sources(path: Path, allow_commands: bool) -> Iterator[Source]:
    from macasr.data.loader import audio_name, bad_clip
    from macasr.data.manifest import manifest_stem, open_cuts

    base = str(path.resolve().parent / manifest_stem(path))
    for cut in open_cuts(path, allow_commands=allow_commands):  # DataError naming the manifest when it is bad
        problem = (cut.custom or {}).get("problem")
        yield Source(audio_name(cut), f"{base}/{cut.id}", None if problem else cut,
                     bad_clip(cut, str(problem)).line if problem else None, id=cut.id)


def expand(inputs: Sequence[str | Path], allow_commands: bool = False) -> list[Source]:
    """Command-line inputs → Sources, in the order given (a folder's or pattern's files sorted).

    A manifest that cannot be read at all is one Source with its error (DataError's line)."""
    sources: list[Source] = []
    for given in map(str, inputs):
        path = Path(given)
        if not path.exists() and any(c in given for c in GLOB_CHARS):
            matches = sorted(glob.glob(given, recursive=True))
            if not matches:
                sources.append(Source(given, given, error=f"{given}: no file matches this pattern"))
            sources += expand(matches, allow_commands) if matches else []
        elif _is_manifest(path):
            try:
                sources += list(_manifest_sources(path, allow_commands))
            except DataError as e:
                sources.append(Source(given, given, error=str(e)))
        elif path.is_dir():
            files = _audio_files(path)
            if not files:
                sources.append(Source(given, given, error=f"{given}: no audio files in this folder (expected "
                                                          f"{', '.join(AUDIO_EXTENSIONS)})"))
            sources += [_file_source(p) for p in files]
        else:
            sources.append(_file_source(path))
    return sources


def api_sources(inputs: str | Path | Sequence[str | Path | tuple[Any, int]]) -> list[Source]:
    """The Python API's inputs: file paths (one audio file each) or (samples, sample rate) pairs;
    one path alone (a str or Path, not in a list) is one input, not a sequence of characters."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    sources = []
    for i, given in enumerate(inputs):
        if isinstance(given, (str, Path)):
            sources.append(_file_source(Path(given)))
            continue
        name = f"<array {i}>"
        try:
            samples, rate = given
            sources.append(Source(name, name, array_cut(samples, rate, i)))
        except (TypeError, ValueError):
            sources.append(Source(name, name, error=f"{name}: expected a file path or a (samples, sample rate) pair, "
                                                    f"got {type(given).__name__}"))
        except DataError as e:
            sources.append(Source(name, name, error=str(e)))
    return sources


# ---------------------------------------------------------------- output names


def output_names(sources: Sequence[Source]) -> list[str]:
    """A distinct relative name per source for `--output-dir`: the file's stem ("talk"), with as
    many of its folders as tell it apart from the others ("a/talk", "b/talk"); files that differ
    only in extension keep it ("talk.wav", "talk.flac"); the same input twice gets "-2", "-3"."""
    keys = [_safe_parts(s.key) for s in sources]
    files: dict[tuple[str, ...], set[str]] = {}  # key → the files that have it
    for source, key in zip(sources, keys):
        files.setdefault(key, set()).add(source.name)
    keys = [(*k[:-1], Path(s.name).name) if s.id is None and len(files[k]) > 1 else k for s, k in zip(sources, keys)]
    depth = [1] * len(keys)
    while True:
        names = ["/".join(k[-d:]) for k, d in zip(keys, depth)]
        owners: dict[str, set[tuple[str, ...]]] = {}
        for name, key in zip(names, keys):
            owners.setdefault(name, set()).add(key)
        grow = [i for i, n in enumerate(names) if len(owners[n]) > 1 and depth[i] < len(keys[i])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    seen: Counter[str] = Counter()
    out = []
    for name in names:
        seen[name] += 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def _safe_parts(key: str) -> tuple[str, ...]:
    """A key's path parts without the root or any "." / ".." (a name never leaves the output folder)."""
    parts = tuple(p for p in PurePosixPath(key.replace("\\", "/")).parts if p not in ("/", ".", "..", ""))
    return parts or ("audio",)
