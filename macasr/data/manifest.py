"""Manifests in, lazy lhotse CutSets out.

Three kinds of manifest are read, all lazily (memory stays flat for a million rows):
- macasr JSON Lines: one utterance per line, `{"audio", "text", "duration"}` (+ `id`, `offset`,
  `speaker`). Relative audio paths are resolved from the manifest's folder, so a data folder can
  be moved whole. Every field of every line is checked in one streaming pass before use
  (`entry_problems`), and all problems of a file are reported at once, each as `FILE:LINE: ...`.
- lhotse CutSet manifests (`*.jsonl.gz`, or `*.jsonl` whose rows are lhotse cuts), as written by
  `macasr data prepare` and lhotse's recipes.
- lhotse Shar directories (`cuts.000000.jsonl.gz` + `recording.000000.tar` ...).

Every cut handed on has exactly one supervision holding the transcript, and
`cut.custom["origin"]` naming where it came from (`FILE:LINE` for macasr JSONL, `FILE` otherwise).
A cut whose audio is known to be unusable before any decoding (missing file, unreadable header,
offset past the end, a length 10 % off the manifest's duration, no transcript) carries
`cut.custom["problem"]`, one line saying why: the loader reports it as a bad clip.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import json
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import soundfile as sf
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment
from lhotse.audio import AudioSource
from lhotse.cut import Cut
from lhotse.cut.data import DataCut
from lhotse.utils import fastcopy

from macasr.audio import SAMPLE_RATE, seconds_problem
from macasr.errors import ConfigError, DataError

if TYPE_CHECKING:
    from macasr.config import Config

REQUIRED = ("audio", "text", "duration")
MAX_PROBLEMS_SHOWN = 20  # lines of one DataError; the rest are counted
_MAX_VALUE_CHARS = 60  # a quoted value longer than this is cut with "..."


@dataclasses.dataclass(frozen=True)
class Utterance:
    id: str
    audio: str  # absolute path
    text: str
    duration: float  # seconds
    offset: float | None = None  # seconds into the file of a segment `duration` long; None: the whole file
    speaker: str | None = None


def show_value(value: object) -> str:
    """A field's value as it would appear in the JSON line (NaN, "abc", null), cut if long."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 3] + "..."


def _text_problem(value: object, *, path: bool) -> str | None:
    if path:
        ok = isinstance(value, str) and value.strip() != ""
        return None if ok else "expected the audio file's path as a non-empty string"
    return None if isinstance(value, str) else "expected the transcript as a string"


def _id_problem(value: object) -> str | None:
    ok = (isinstance(value, str) and value.strip() != "") or (isinstance(value, int) and not isinstance(value, bool))
    return None if ok else "expected a non-empty string (or an integer)"


def entry_problems(entry: Mapping[str, object]) -> list[str]:
    """Every problem with one utterance's fields, each "`key` = VALUE: expected ..." or
    "missing key ..."; empty when the entry is usable. Independent of where entries come from."""
    checks = {
        "audio": lambda v: _text_problem(v, path=True),
        "text": lambda v: _text_problem(v, path=False),
        "duration": lambda v: seconds_problem(v, zero_ok=False),
        "offset": lambda v: seconds_problem(v, zero_ok=True),
        "id": _id_problem,
        "speaker": _id_problem,
    }
    problems = [f"missing key `{key}` (expected {', '.join(REQUIRED)})" for key in REQUIRED if key not in entry]
    for key, check in checks.items():
        if key in entry and (problem := check(entry[key])):
            problems.append(f"`{key}` = {show_value(entry[key])}: {problem}")
    return problems


def _utterance(entry: Mapping[str, object], folder: Path, default_id: str) -> Utterance:
    """An entry with no `entry_problems` → Utterance, its audio path resolved from `folder`."""
    audio = Path(str(entry["audio"])).expanduser()
    return Utterance(
        id=str(entry.get("id", default_id)), audio=str(audio if audio.is_absolute() else folder / audio),
        text=str(entry["text"]), duration=float(entry["duration"]),  # type: ignore[arg-type]
        offset=float(entry["offset"]) if "offset" in entry else None,  # type: ignore[arg-type]
        speaker=str(entry["speaker"]) if "speaker" in entry else None,
    )


def problems_error(problems: list[str], source: str) -> DataError:
    """One DataError listing up to MAX_PROBLEMS_SHOWN problem lines and counting the rest."""
    shown = problems[:MAX_PROBLEMS_SHOWN]
    if len(problems) > len(shown):
        shown.append(f"... and {len(problems) - len(shown):,} more problems in {source}")
    return DataError("\n".join(shown))


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a text file (gzipped when it ends in .gz), streamed; DataError when it cannot be read."""
    try:
        opened = gzip.open(path, "rt", encoding="utf-8-sig") if path.suffix == ".gz" else path.open(encoding="utf-8-sig")
        with opened as f:  # utf-8-sig: a BOM is not part of line 1
            yield from enumerate(f, start=1)
    except (OSError, EOFError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise DataError(f"{path}: cannot read manifest ({reason})") from None


def json_rows(path: Path, problems: list[str]) -> Iterator[tuple[int, str, object]]:
    """(line number, "FILE:LINE", parsed value) of each non-empty line of a JSON Lines file; a
    line that is not JSON is added to `problems` ("FILE:LINE: not valid JSON (...)") and skipped."""
    for number, line in numbered_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{where}: not valid JSON ({e.msg})")
            continue
        yield number, where, value


def _id_key(utterance_id: str) -> int:
    """8-byte digest of an id: a million of them fit in a set of tens of MB, unlike the strings."""
    return int.from_bytes(hashlib.blake2b(utterance_id.encode(), digest_size=8).digest(), "little")


def _entries(path: Path) -> Iterator[tuple[int, Utterance]]:
    """(line number, Utterance) of each usable line; problems are gathered as we go and raised
    together (DataError) after the last line.

    Ids are checked for repeats by an 8-byte digest (a set of a million fits in ~70 MB, the ids
    themselves would not); the line an id was first used on is found by a second pass, only when
    some id repeats."""
    folder = path.resolve().parent
    problems: list[str] = []
    seen: set[int] = set()
    repeats: list[tuple[int, str, str]] = []  # (index in problems, id, where)
    for number, where, entry in json_rows(path, problems):
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a JSON object, got {type(entry).__name__}")
            continue
        if bad := entry_problems(entry):
            problems += [f"{where}: {p}" for p in bad]
            continue
        u = _utterance(entry, folder, f"{path.stem}-{number:06d}")
        key = _id_key(u.id)
        if key in seen:
            given = "" if "id" in entry else " (this line's default id)"
            repeats.append((len(problems), u.id, f"{where}: `id` = {show_value(u.id)}{given}"))
            problems.append("")
            continue
        seen.add(key)
        yield number, u
    if repeats:
        first = _first_lines(path, {utterance_id for _, utterance_id, _ in repeats})
        for index, utterance_id, head in repeats:
            problems[index] = f"{head}: expected an id used once in the manifest (line {first[utterance_id]} has it too)"
    if problems:
        raise problems_error(problems, str(path))


def _first_lines(path: Path, ids: set[str]) -> dict[str, int]:
    """The first line each of `ids` is used on (a second pass over a manifest whose lines parsed)."""
    folder, first = path.resolve().parent, {}
    for number, line in numbered_lines(path):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and not entry_problems(entry):
            u = _utterance(entry, folder, f"{path.stem}-{number:06d}")
            if u.id in ids:
                first.setdefault(u.id, number)
    return first


def load_manifest(path: str | Path) -> list[Utterance]:
    """All utterances of one macasr JSONL manifest; DataError listing every bad line (and duplicate id)."""
    path = Path(path)
    utterances = [u for _, u in _entries(path)]
    if not utterances:
        raise DataError(f"{path}: manifest has no utterances")
    return utterances


def load_manifests(paths: Iterable[str | Path]) -> list[Utterance]:
    """The utterances of several manifests, in order (ids need only be unique per manifest)."""
    return [u for p in paths for u in load_manifest(p)]


def write_manifest(path: str | Path, rows: Iterable[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- lazy CutSets

DURATION_TOLERANCE = 0.10  # a file this much longer or shorter than its manifest duration is a bad clip
_HEADER_CACHE = 65_536  # audio headers remembered per process (rows often share a few long files)
_LHOTSE_KEYS = ("supervisions", "recording", "tracks")  # keys of a lhotse cut row
Kind = Literal["macasr", "lhotse", "shar"]


@dataclasses.dataclass(frozen=True)
class ManifestSummary:
    cuts: int
    seconds: float
    speakers: int | None  # None when no cut names its speaker
    durations: np.ndarray = dataclasses.field(compare=False, repr=False)  # (cuts,) float64 seconds, in order

    def kept(self, low: float = 0.0, high: float = 0.0) -> int:
        """How many cuts last at least `low` and at most `high` seconds (0 = that end open)."""
        inside = self.durations >= low
        if high > 0:
            inside &= self.durations <= high
        return int(np.count_nonzero(inside))


def _shar_shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("cuts.*.jsonl*"))


def _first_row(path: Path) -> Mapping[str, object] | None:
    for number, line in numbered_lines(path):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number}: not valid JSON ({e.msg})") from None
            return row if isinstance(row, dict) else None
    return None


def manifest_kind(path: str | Path) -> Kind:
    """What `path` holds, from its first row: a macasr JSONL manifest, a lhotse CutSet manifest,
    or (a folder) lhotse Shar shards. DataError when it is none of them, naming what was found."""
    path = Path(path)
    if path.is_dir():
        if _shar_shards(path):
            return "shar"
        raise DataError(f"{path}: is a folder without Shar shards (cuts.000000.jsonl.gz ...); "
                        "expected a manifest file or a folder written by `macasr data shar`")
    if not path.is_file():
        from macasr.config import looks_like_path

        name = "" if looks_like_path(str(path)) else " (a [datasets.*] name is looked up only with a config: --config FILE)"
        raise DataError(f"{path}: no such manifest{name}")
    row = _first_row(path)
    if row is None or "audio" in row:
        return "macasr"  # an empty file or a bad first line is reported by the full check
    if any(key in row for key in _LHOTSE_KEYS):
        return "lhotse"
    if "sources" in row or "recording_id" in row:
        what = "recording" if "sources" in row else "supervision"
        raise DataError(f"{path}: is a lhotse {what} manifest; expected cuts (pair recordings with their supervisions: "
                        "`macasr data prepare` writes cut manifests)")
    raise DataError(f"{path}:1: expected a macasr manifest row (audio, text, duration) or a lhotse cut, "
                    f"got keys {', '.join(map(str, list(row)[:6]))}")


@functools.lru_cache(maxsize=_HEADER_CACHE)
def _audio_header(path: str) -> tuple[int, int, int] | str:
    """(sampling rate, frames (0 = unknown), channels) from the file header, or why it cannot be read."""
    if not Path(path).is_file():
        return "no such audio file"
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        return f"cannot read audio header ({e})"
    return int(info.samplerate), int(info.frames), int(info.channels)


def _segment_problem(u: Utterance, file_seconds: float) -> tuple[float, str | None]:
    """→ (seconds the cut can read, problem or None), by the header's length alone."""
    if u.offset is None:
        if abs(file_seconds - u.duration) > DURATION_TOLERANCE * u.duration:
            return file_seconds, (f"the file is {file_seconds:.2f} s long but the manifest says duration "
                                  f"{u.duration:g} s (more than {DURATION_TOLERANCE:.0%} apart)")
        return file_seconds, None
    if u.offset >= file_seconds:
        return u.duration, f"offset {u.offset:g} s is beyond the end of the file ({file_seconds:.2f} s)"
    available = min(u.duration, file_seconds - u.offset)
    if u.duration - available > DURATION_TOLERANCE * u.duration:
        return available, (f"offset {u.offset:g} s + duration {u.duration:g} s runs past the end of the file "
                           f"({file_seconds:.2f} s)")
    return available, None


def utterance_cut(u: Utterance, origin: str) -> MonoCut:
    """One macasr manifest row → a MonoCut over its audio file (all channels, mixed to mono when
    loaded), one supervision with the transcript; `custom` holds origin (and problem, if any)."""
    header = _audio_header(u.audio)
    problem = header if isinstance(header, str) else None
    rate, frames, channels = (SAMPLE_RATE, 0, 1) if isinstance(header, str) else header
    start, seconds = u.offset or 0.0, u.duration
    if problem is None and frames > 0:
        seconds, problem = _segment_problem(u, frames / rate)
    num_samples = frames if frames > 0 and problem is None else max(frames, round((start + seconds) * rate))
    channel_ids = list(range(channels))
    recording = Recording(
        id=u.id, sources=[AudioSource(type="file", channels=channel_ids, source=u.audio)],
        sampling_rate=rate, num_samples=num_samples, duration=num_samples / rate,
    )
    channel: int | list[int] = 0 if channels == 1 else channel_ids
    supervision = SupervisionSegment(id=u.id, recording_id=u.id, start=0.0, duration=seconds, channel=channel,
                                     text=u.text, speaker=u.speaker)
    custom = {"origin": origin} | ({"problem": problem} if problem else {})
    return MonoCut(id=u.id, start=start, duration=seconds, channel=channel, recording=recording,  # type: ignore[arg-type]
                   supervisions=[supervision], custom=custom)


class JsonlCuts:
    """A macasr JSONL manifest as an iterable of cuts, re-read on every pass (lazy, picklable).
    `part` = (rank, size): only the usable rows at positions rank, rank + size, ... become cuts
    (the others' audio headers are never opened)."""

    def __init__(self, path: Path, part: tuple[int, int] = (0, 1)) -> None:
        self.path, self.part = path, part

    def __iter__(self) -> Iterator[MonoCut]:
        rank, size = self.part
        for position, (number, u) in enumerate(_entries(self.path)):
            if position % size == rank:
                yield utterance_cut(u, f"{self.path}:{number}")


class EveryNth:
    """The cuts of `cuts` at positions rank, rank + size, ... (lazy, picklable; nothing else is read)."""

    def __init__(self, cuts: Iterable[Cut], rank: int, size: int) -> None:
        self.cuts, self.rank, self.size = cuts, rank, size

    def __iter__(self) -> Iterator[Cut]:
        return islice(self.cuts, self.rank, None, self.size)


def with_one_supervision(cut: Cut, origin: str, allow_commands: bool = False) -> Cut:
    """A lhotse cut as macasr uses it: one supervision holding the whole transcript (several are
    joined in time order), `custom["origin"]`, and `custom["problem"]` when it has no transcript,
    or when its audio comes from a shell command and `allow_commands` is off."""
    if not isinstance(cut, DataCut):
        return cut  # a MixedCut (already augmented) passes through as it is
    custom = dict(cut.custom or {}) | {"origin": origin}
    recording = getattr(cut, "recording", None)
    commands = [s.source for s in (recording.sources if recording else []) if s.type == "command"]
    if commands and not allow_commands:
        shown = str(commands[0]) if len(str(commands[0])) <= 60 else str(commands[0])[:57] + "..."
        custom["problem"] = (f"its audio comes from a shell command ({shown}); macasr runs the commands of a manifest "
                             "only with [data] allow_commands = true, for manifests you trust")
    supervisions = sorted(cut.supervisions, key=lambda s: s.start)
    if all(s.text is None for s in supervisions):  # an empty text is an empty reference, as in macasr JSONL
        custom["problem"] = "no transcript (the cut has no supervision with text)"
    texts = [s.text.strip() for s in supervisions if s.text and s.text.strip()]
    if len(supervisions) > 1:
        first, last = supervisions[0], supervisions[-1]
        joined = fastcopy(first, text=" ".join(texts), duration=last.end - first.start)
        supervisions = [joined]
    return fastcopy(cut, supervisions=supervisions, custom=custom)


def check_manifest(path: str | Path) -> Kind:
    """Read a whole manifest once, streaming: DataError listing every bad line of a macasr JSONL
    manifest (or naming a lhotse one that cannot be parsed); DataError when it holds no cut."""
    path = Path(path)
    kind = manifest_kind(path)
    if manifest_summary(path, kind).cuts == 0:
        raise DataError(f"{path}: manifest has no utterances")
    return kind


def shar_part(folder: Path, rank: int, size: int) -> dict[str, list[str]]:
    """The files of every `size`-th Shar shard of `folder` from shard `rank`, by field ("cuts",
    "recording", ...), for `CutSet.from_shar(fields=...)`: `size` processes given ranks 0..size-1
    read disjoint shards that together are all of them. DataError when there are fewer shards
    than processes (a process would read nothing)."""
    shards = _shar_shards(folder)
    if len(shards) < size:
        raise DataError(f"{folder}: {len(shards)} Shar shard{'s' if len(shards) != 1 else ''} cannot give each of "
                        f"{size} processes its own; write it with a smaller --shard-size (at least {size} shards)")
    numbers = [p.name.split(".")[1] for p in shards[rank::size]]  # cuts.000003.jsonl.gz → 000003
    fields: dict[str, list[str]] = {"cuts": [str(p) for p in shards[rank::size]]}
    for other in sorted({p.name.split(".")[0] for p in folder.iterdir()} - {"cuts"}):
        files = {p.name.split(".")[1]: p for p in folder.glob(f"{other}.*")}
        fields[other] = [str(files[n]) for n in numbers if n in files]
    return fields


def _raw_cuts(path: Path, kind: Kind, shuffle_shards: bool = False, seed: int = 0, audio: bool = True,
              part: tuple[int, int] = (0, 1)) -> CutSet:
    if kind == "macasr":
        return CutSet(JsonlCuts(path, part))
    if kind == "lhotse":
        cuts = CutSet.from_jsonl_lazy(path)
        return cuts if part[1] == 1 else CutSet(EveryNth(cuts, *part))
    if not audio:  # the cuts' metadata alone, without reading the audio tar files
        return CutSet.from_shar(fields={"cuts": [str(p) for p in _shar_shards(path)]})
    if part[1] > 1:
        return CutSet.from_shar(fields=shar_part(path, *part), shuffle_shards=shuffle_shards, seed=seed)
    return CutSet.from_shar(in_dir=path, shuffle_shards=shuffle_shards, seed=seed)


def open_cuts(path: str | Path, *, shuffle_shards: bool = False, seed: int = 0, allow_commands: bool = False,
              part: tuple[int, int] = (0, 1)) -> CutSet:
    """A manifest (macasr JSONL, lhotse CutSet or Shar folder) as a lazy CutSet of cuts with one
    supervision each, after one streaming check of every row (`check_manifest`).

    `shuffle_shards` (Shar only) reads the shards in an order drawn from `seed` (and the epoch).
    `part` = (rank, size) reads only that rank's share, disjoint from the other ranks' and together
    all of it: its own Shar shards (`shar_part`), or every size-th cut of another kind from
    position rank. DataError when there are fewer shards (cuts) than ranks: a rank would read nothing.
    Cuts whose audio a shell command produces (lhotse "command" sources, Kaldi pipes) are bad clips
    unless `allow_commands`: a shared manifest must not run code on the reader's machine unasked.
    Raises DataError naming the file (and lines) when it is missing, of no known kind, or bad.
    """
    path = Path(path)
    kind = check_manifest(path)
    if kind != "shar" and (count := manifest_summary(path, kind).cuts) < part[1]:
        raise DataError(f"{path}: {count} clip{'s' if count != 1 else ''} cannot give each of {part[1]} processes "
                        "its own; give it more clips, or train with fewer processes")
    cuts = _raw_cuts(path, kind, shuffle_shards, seed, part=part)
    if kind == "macasr":
        return cuts
    return cuts.map(functools.partial(with_one_supervision, origin=str(path), allow_commands=allow_commands))


def manifest_summary(path: str | Path, kind: Kind | None = None) -> ManifestSummary:
    """Cuts, seconds, distinct speakers and every cut's duration of a manifest, in one streaming
    pass (Shar audio is not read). Remembered per file version (path, size, modification time),
    so opening a manifest and describing it at start-up read it once."""
    path = Path(path)
    kind = kind or manifest_kind(path)
    stat = path.stat()
    return _summary(str(path.resolve()), stat.st_size, stat.st_mtime_ns, kind)


@functools.lru_cache(maxsize=64)
def _summary(path_name: str, _size: int, _mtime_ns: int, kind: Kind) -> ManifestSummary:
    path = Path(path_name)
    durations, speakers = array("d"), set()
    try:
        if kind == "macasr":
            for _, u in _entries(path):
                durations.append(u.duration)
                if u.speaker is not None:
                    speakers.add(_id_key(u.speaker))
        else:
            for cut in _raw_cuts(path, kind, audio=False):
                durations.append(cut.duration)
                speakers.update(_id_key(s.speaker) for s in cut.supervisions if s.speaker)
    except DataError:
        raise
    except Exception as e:  # lhotse's parsers raise many types; any of them means a bad manifest
        raise DataError(f"{path}: cannot read it as a lhotse {'Shar folder' if kind == 'shar' else 'cut manifest'} "
                        f"(after {len(durations):,} cuts: {type(e).__name__}: {e})") from None
    seconds = np.frombuffer(durations, dtype=np.float64)
    return ManifestSummary(len(seconds), float(seconds.sum()), len(speakers) or None, seconds)


# ----------------------------------------------------------------------------- named datasets


def manifest_stem(path: str | Path) -> str:
    """A manifest's name without its extensions (test.jsonl, test.jsonl.gz → test; a Shar folder keeps its name)."""
    name = Path(path).name.removesuffix(".gz")
    return Path(name).stem if "." in name else name


@dataclasses.dataclass(frozen=True)
class DataSource:
    """One entry of `[data] train`/`valid`: a [datasets.*] dataset, or a bare manifest path (named
    by its file stem, with default options)."""

    name: str
    manifests: list[str]
    weight: float = 1.0
    text: str = "keep"
    drop_annotations: bool = False
    min_duration: float = 0.0
    max_duration: float = 0.0


def source_for(cfg: Config, entry: str) -> DataSource:
    """A dataset name from [datasets.*] or a manifest path → DataSource; ConfigError for a name
    that is not defined (listing those that are)."""
    from macasr.config import looks_like_path

    if entry in cfg.datasets:
        d = cfg.datasets[entry]
        return DataSource(entry, list(d.manifest), d.weight, d.text, d.drop_annotations, d.min_duration, d.max_duration)
    if looks_like_path(entry):
        return DataSource(manifest_stem(entry), [entry])
    known = ", ".join(cfg.datasets) or "none defined"
    raise ConfigError(f"no dataset named `{entry}` in [datasets.*] (known: {known})")


def dataset_sources(cfg: Config, split: Literal["train", "valid"]) -> list[DataSource]:
    """The sources of `[data] train` or `[data] valid`, in order."""
    return [source_for(cfg, entry) for entry in getattr(cfg.data, split)]
