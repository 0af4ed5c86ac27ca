"""A Kaldi data folder (wav.scp, text, optional segments, utt2spk, utt2dur) → a lhotse CutSet.

This is how Fisher, Switchboard and (with recovered audio) How2 are usually delivered. Every file
is checked line by line and every problem is reported at once as `FILE:LINE: ...`. wav.scp lines of
the form `sph2pipe -f wav -p -c N FILE |` are read directly (FILE, channel N-1) when soundfile can
decode FILE (uncompressed NIST SPHERE); any other pipe runs a command and needs `allow_pipes`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import math
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from macasr.data.manifest import problems_error
from macasr.errors import DataError

SEGMENT_SLACK = 0.05  # seconds a segment may run past its recording's end (Kaldi rounds times to 10 ms)


@dataclasses.dataclass(frozen=True)
class Line:
    where: str  # FILE:LINE
    fields: list[str]


@dataclasses.dataclass(frozen=True)
class Audio:
    """One wav.scp entry, resolved: a file read directly, or a command (type "command")."""

    kind: str  # "file" | "command"
    source: str  # absolute path, or the command without its trailing "|"
    sampling_rate: int
    num_samples: int
    num_channels: int
    channel: int | None  # the one channel used (sph2pipe -c N → N-1); None: the file has one

    @property
    def duration(self) -> float:
        return self.num_samples / self.sampling_rate


def read_table(path: Path, fields: tuple[int, int | None], problems: list[str], *, rest: bool = False) -> dict[str, Line]:
    """KEY FIELD... lines → {key: Line}; a wrong field count or a repeated key is a problem.
    `fields` = (min, max) fields after the key (max None: any); `rest` keeps everything after the
    key as one field (a transcript, a command)."""
    table: dict[str, Line] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        problems.append(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})")
        return table
    low, high = fields
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        key, *split = re.split(r"\s+", raw.strip(), maxsplit=1 if rest else 0)
        values = ([split[0].strip()] if split else []) if rest else split
        if len(values) < low or (high is not None and len(values) > high):
            expected = f"{low}" if low == high else f"{low} to {high}" if high is not None else f"at least {low}"
            problems.append(f"{where}: expected {expected} field(s) after the id, got {len(values)}")
            continue
        if key in table:
            problems.append(f"{where}: id {key!r} again (first on {table[key].where.rsplit(':', 1)[1]})")
            continue
        table[key] = Line(where, values)
    return table


# ----------------------------------------------------------------------------- wav.scp


def parse_sph2pipe(command: str) -> tuple[str, int | None] | None:
    """`sph2pipe -f wav -p -c N FILE |` → (FILE, N-1 or None for all channels); None when the
    command is anything else (other options such as -t, other programs, more pipes)."""
    try:
        words = shlex.split(command.rstrip().removesuffix("|"))
    except ValueError:
        return None
    if not words or Path(words[0]).name != "sph2pipe":
        return None
    channel, files, i = None, [], 1
    while i < len(words):
        word = words[i]
        if word == "-f" and i + 1 < len(words) and words[i + 1] in ("wav", "rif"):
            i += 2
        elif word == "-p":
            i += 1
        elif word == "-c" and i + 1 < len(words) and words[i + 1].isdigit():
            channel, i = int(words[i + 1]) - 1, i + 2
        elif word.startswith("-"):
            return None
        else:
            files.append(word)
            i += 1
    return (files[0], channel) if len(files) == 1 and "|" not in words else None


def _resolve(path: str, data_dir: Path) -> Path:
    """Kaldi paths are relative to the recipe folder (the cwd); the data folder is tried too."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return candidate
    for base in (Path.cwd(), data_dir):
        if (base / candidate).exists():
            return (base / candidate).resolve()
    return (Path.cwd() / candidate).resolve()


def _file_audio(path: Path, channel: int | None) -> Audio:
    """Header of a file soundfile decodes (one frame is read to be sure); ValueError why not."""
    import soundfile as sf

    if not path.is_file():
        raise ValueError(f"no such audio file {path}")
    try:
        info = sf.info(str(path))
        with sf.SoundFile(str(path)) as f:
            f.read(1)
    except (RuntimeError, sf.LibsndfileError) as e:
        raise ValueError(f"soundfile cannot decode {path} ({e})") from None
    return Audio("file", str(path), int(info.samplerate), int(info.frames), int(info.channels), channel)


def _command_audio(command: str) -> Audio:
    """Run a wav.scp pipe once for its header (sampling rate, length, channels); ValueError why not."""
    import soundfile as sf

    try:
        run = subprocess.run(command, shell=True, capture_output=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        raise ValueError(f"command ran over 600 s: {command}") from None
    if run.returncode != 0:
        last = (run.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise ValueError(f"command failed with status {run.returncode} ({last}): {command}")
    try:
        info = sf.info(io.BytesIO(run.stdout))
    except (RuntimeError, sf.LibsndfileError) as e:
        raise ValueError(f"command's output is not audio soundfile reads ({e}): {command}") from None
    return Audio("command", command, int(info.samplerate), int(info.frames), int(info.channels), None)


def resolve_audio(entry: str, data_dir: Path, allow_pipes: bool) -> Audio:
    """One wav.scp value → Audio; ValueError (the message without FILE:LINE) when unusable."""
    if not entry.rstrip().endswith("|"):
        return _file_audio(_resolve(entry, data_dir), None)
    command = entry.rstrip().removesuffix("|").strip()
    if sph := parse_sph2pipe(entry):
        path, channel = sph
        try:
            audio = _file_audio(_resolve(path, data_dir), channel)
        except ValueError as e:
            if not allow_pipes:
                raise ValueError(f"{e}; pass --allow-pipes to run the sph2pipe command instead") from None
        else:
            if channel is not None and not 0 <= channel < audio.num_channels:
                raise ValueError(f"sph2pipe -c {channel + 1}: {path} has {audio.num_channels} channel(s)")
            return audio
    if not allow_pipes:
        raise ValueError(f"piped command {command!r} is not run without --allow-pipes "
                         "(it executes a shell command; only `sph2pipe -f wav -p -c N FILE |` is read directly)")
    return _command_audio(command)


# ----------------------------------------------------------------------------- the folder


def _seconds(value: str, where: str, what: str, problems: list[str], *, allow: tuple[float, ...] = ()) -> float | None:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if number in allow or (math.isfinite(number) and number >= 0):
        return number
    problems.append(f"{where}: {what} = {value!r}: expected seconds as a finite number >= 0")
    return None


def _check_ids(table: dict[str, Line], known: dict[str, Any], what: str, problems: list[str]) -> None:
    for key, line in table.items():
        if key not in known:
            problems.append(f"{line.where}: {key!r} is not {what}")


def prepare_kaldi(data_dir: Path, out_dir: Path, *, allow_pipes: bool = False, name: str | None = None) -> Any:
    """Check a Kaldi folder and write `OUT_DIR/<name>.jsonl.gz` (name: the folder's name);
    returns the SplitSummary. DataError lists every problem of every file at once."""
    from macasr.data.prepare import SplitSummary, dataset_name, refuse_features_only, write_cuts

    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: no such folder (expected a Kaldi data folder with wav.scp and text)")
    refuse_features_only(data_dir)
    for required in ("wav.scp", "text"):
        if not (data_dir / required).is_file():
            raise DataError(f"{data_dir}: no {required} (a Kaldi data folder needs wav.scp and text)")
    cuts = kaldi_cuts(data_dir, allow_pipes=allow_pipes)
    name = name or data_dir.name
    summary = SplitSummary(dataset_name(name, ""), out_dir / f"{name}.jsonl.gz")
    return write_cuts(cuts, summary)


def kaldi_cuts(data_dir: Path, *, allow_pipes: bool = False) -> Iterator[Any]:
    """Every utterance of a Kaldi folder as a MonoCut with one supervision (text, speaker), made
    as they are written (a Fisher folder has a million segments); all checks run first."""
    problems: list[str] = []
    wav = read_table(data_dir / "wav.scp", (1, 1), problems, rest=True)
    text = read_table(data_dir / "text", (0, 1), problems, rest=True)
    optional = {n: data_dir / n for n in ("segments", "utt2spk", "utt2dur") if (data_dir / n).is_file()}
    segments = read_table(optional["segments"], (3, 3), problems) if "segments" in optional else None
    utt2spk = read_table(optional["utt2spk"], (1, 1), problems) if "utt2spk" in optional else {}
    utt2dur = read_table(optional["utt2dur"], (1, 1), problems) if "utt2dur" in optional else {}

    audio: dict[str, Audio] = {}
    for key, line in wav.items():
        try:
            audio[key] = resolve_audio(line.fields[0], data_dir, allow_pipes)
        except ValueError as e:
            problems.append(f"{line.where}: {e}")
            continue
        if audio[key].channel is None and audio[key].num_channels > 1:
            problems.append(f"{line.where}: {key} has {audio[key].num_channels} channels; name one per entry "
                            "(`sph2pipe -f wav -p -c N FILE |`) or split the file into mono files")

    spans = _spans(segments, wav, audio, text, problems) if segments is not None else _whole(audio, text)
    _check_ids(text, segments if segments is not None else wav, "in segments" if segments is not None else "in wav.scp", problems)
    _check_ids(utt2spk, text, "in text", problems)
    _check_ids(utt2dur, text, "in text", problems)
    for utt in text:
        if utt2spk and utt not in utt2spk:
            problems.append(f"{text[utt].where}: {utt!r} has no line in {data_dir / 'utt2spk'}")
    for utt, line in utt2dur.items():
        _seconds(line.fields[0], line.where, "duration", problems)
    if problems:
        raise problems_error(problems, str(data_dir))
    return (_cut(utt, spans[utt], audio, text[utt].fields[0] if text[utt].fields else "", utt2spk.get(utt))
            for utt in text if utt in spans)


def _spans(segments: dict[str, Line], wav: dict[str, Line], audio: dict[str, Audio], text: dict[str, Line],
           problems: list[str]) -> dict[str, tuple[str, float, float]]:
    """segments lines → {utt: (recording, start, duration)}, each checked against its recording."""
    spans = {}
    for utt, line in segments.items():
        rec, start_s, end_s = line.fields
        start = _seconds(start_s, line.where, "start", problems)
        end = _seconds(end_s, line.where, "end", problems, allow=(-1.0,))
        if rec not in wav:
            problems.append(f"{line.where}: recording {rec!r} is not in wav.scp")
            continue
        if utt not in text:
            problems.append(f"{line.where}: utterance {utt!r} has no line in text")
            continue
        if start is None or end is None or rec not in audio:
            continue
        length = audio[rec].duration
        end = length if end == -1 else end
        if end <= start:
            problems.append(f"{line.where}: end {end_s} is not after start {start_s}")
        elif end > length + SEGMENT_SLACK:
            problems.append(f"{line.where}: segment {start_s}-{end_s} s runs past the end of {rec} ({length:.2f} s)")
        else:
            spans[utt] = (rec, start, min(end, length) - start)
    return spans


def _whole(audio: dict[str, Audio], text: dict[str, Line]) -> dict[str, tuple[str, float, float]]:
    """No segments: each utterance is a whole recording of the same id (a `text` id missing from
    wav.scp is reported by the id check)."""
    return {utt: (utt, 0.0, audio[utt].duration) for utt in text if utt in audio}


def _recording(rec_id: str, a: Audio) -> Any:
    from lhotse import AudioSource, Recording

    source = AudioSource(type=a.kind, channels=list(range(a.num_channels)), source=a.source)
    return Recording(id=rec_id, sources=[source], sampling_rate=a.sampling_rate, num_samples=a.num_samples, duration=a.duration)


def _cut(utt: str, span: tuple[str, float, float], audio: dict[str, Audio], text: str, speaker: Line | None) -> Any:
    from lhotse import MonoCut, SupervisionSegment

    rec_id, start, duration = span
    a = audio[rec_id]
    channel = a.channel or 0
    supervision = SupervisionSegment(id=utt, recording_id=rec_id, start=0.0, duration=duration, channel=channel,
                                     text=text, speaker=speaker.fields[0] if speaker else None)
    return MonoCut(id=utt, start=start, duration=duration, channel=channel, recording=_recording(rec_id, a),
                   supervisions=[supervision])


# ----------------------------------------------------------------------------- reading SPHERE in lhotse


@functools.cache
def _sphere_backend_class() -> type:
    from lhotse.audio.backend import LibsndfileBackend, Sph2pipeSubprocessBackend

    class SoundfileFirstSphere(Sph2pipeSubprocessBackend):
        """lhotse hands every `*.sph` path to the sph2pipe program; uncompressed SPHERE (what
        `prepare kaldi` reads directly) is decoded by libsndfile first, sph2pipe stays the fallback
        for shorten-compressed files."""

        def read_audio(self, path_or_fd: Any, offset: float = 0.0, duration: float | None = None,
                       force_opus_sampling_rate: int | None = None) -> Any:
            try:
                return LibsndfileBackend().read_audio(path_or_fd, offset=offset, duration=duration)
            except Exception:  # noqa: BLE001 - libsndfile refuses shorten; sph2pipe may read it
                return super().read_audio(path_or_fd, offset=offset, duration=duration)

        def info(self, path_or_fd: Any, force_opus_sampling_rate: int | None = None) -> Any:
            try:
                return LibsndfileBackend().info(path_or_fd)
            except Exception:  # noqa: BLE001
                return super().info(path_or_fd)

    return SoundfileFirstSphere


@contextlib.contextmanager
def lhotse_reads_sphere() -> Iterator[None]:
    """Within the block, lhotse (`cut.load_audio()`, Shar export) reads uncompressed SPHERE files
    with soundfile instead of requiring the sph2pipe program; the previous backend is restored."""
    from lhotse.audio import backend as lb

    previous = lb.get_current_audio_backend()
    others = [b for b in getattr(previous, "backends", [previous]) if not isinstance(b, lb.Sph2pipeSubprocessBackend)]
    lb.set_current_audio_backend(lb.CompositeAudioBackend([_sphere_backend_class()()] + others))
    try:
        yield
    finally:
        lb.set_current_audio_backend(previous)
