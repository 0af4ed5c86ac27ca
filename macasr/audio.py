"""Audio in: any file soundfile reads (WAV, FLAC, OGG, MP3), any rate, depth and channel count
→ mono float32 at 16 kHz, resampled with soxr.

Audio that cannot be used raises DataError naming the file: missing, empty, undecodable, a
segment that starts beyond the end of the file, or any NaN or infinite sample (one such sample
turns every feature of the clip into NaN, and a NaN loss into NaN weights).
"""

from __future__ import annotations

import math
from numbers import Real
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from macasr.errors import DataError

SAMPLE_RATE = 16_000  # Hz, what every encoder here expects


def seconds_problem(value: object, *, zero_ok: bool) -> str | None:
    """None when `value` is usable seconds (a finite number, > 0, or >= 0 with `zero_ok`), else
    what was expected, for a message. Shared by manifest validation and `load_audio`."""
    expected = "expected seconds as a finite number >= 0" if zero_ok else "expected seconds as a finite positive number"
    if not isinstance(value, Real) or isinstance(value, bool):
        return expected
    try:
        seconds = float(value)
    except OverflowError:  # an int too large for a float
        return expected
    return None if math.isfinite(seconds) and (seconds > 0 or (zero_ok and seconds == 0)) else expected


def _check_segment(path: Path, offset: object, duration: object) -> None:
    for key, value, zero_ok in (("offset", offset, True), ("duration", duration, False)):
        problem = None if key == "duration" and value is None else seconds_problem(value, zero_ok=zero_ok)
        if problem:
            raise DataError(f"{path}: {key} {value!r}: {problem}")


def _check_finite(path: Path, audio: np.ndarray) -> None:
    """audio (samples, channels) as decoded: DataError counting the samples with a NaN or Inf."""
    finite = np.isfinite(audio).all(axis=1)
    if finite.all():
        return
    nan = int(np.isnan(audio).any(axis=1).sum())
    bad = int((~finite).sum())
    raise DataError(f"{path}: {bad:,} of {len(audio):,} samples are not finite ({nan:,} NaN, {bad - nan:,} "
                    f"infinite); expected finite samples (about -1 to 1)")


def load_audio(path: str | Path, offset: float = 0.0, duration: float | None = None) -> np.ndarray:
    """Read `path` (optionally a segment: `duration` seconds from `offset` seconds) as mono
    float32 at SAMPLE_RATE, every sample finite.

    Raises DataError naming the file when it is missing, empty or undecodable, when the segment
    is not finite seconds or starts at or beyond the end, or when a sample is NaN or infinite.
    """
    path = Path(path)
    _check_segment(path, offset, duration)
    if not path.is_file():
        raise DataError(f"{path}: no such audio file")
    try:
        with sf.SoundFile(path) as f:
            rate = f.samplerate
            start = int(round(offset * rate))
            frames = -1 if duration is None else max(1, int(round(duration * rate)))
            if start and 0 < f.frames <= start:  # frames is 0 when unknown; seeking there would fail
                raise DataError(f"{path}: offset {offset} s is beyond the end of the file ({f.frames / rate:.2f} s)")
            if start:
                f.seek(start)
            dtype = "float64" if f.subtype == "DOUBLE" else "float32"  # count NaN/Inf as stored
            audio = f.read(frames, dtype=dtype, always_2d=True)  # (samples, channels)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise DataError(f"{path}: cannot decode audio ({e})") from None
    if audio.shape[0] == 0:
        raise DataError(f"{path}: audio is empty")
    _check_finite(path, audio)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, as one line
        mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
        if rate != SAMPLE_RATE:
            mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
        out = np.ascontiguousarray(mono, dtype=np.float32)
    if not np.isfinite(out).all():  # finite but beyond float32 once mixed, resampled or narrowed
        peak = float(np.abs(audio).max())
        raise DataError(f"{path}: samples up to {peak:.3g} overflow 32-bit float once mixed to mono at "
                        f"{SAMPLE_RATE} Hz; expected finite samples (about -1 to 1)")
    return out


def audio_duration(path: str | Path) -> float:
    """Duration in seconds from the file header, without decoding."""
    try:
        return float(sf.info(str(path)).duration)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise DataError(f"{path}: cannot read audio header ({e})") from None
