"""Audio in: any file soundfile reads (WAV, FLAC, OGG, MP3), any rate, depth and channel count
→ mono float32 at 16 kHz, resampled with soxr."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from macasr.errors import DataError

SAMPLE_RATE = 16_000  # Hz, what every encoder here expects


def load_audio(path: str | Path, offset: float = 0.0, duration: float | None = None) -> np.ndarray:
    """Read `path` (optionally a segment, in seconds) as mono float32 at SAMPLE_RATE.

    Raises DataError naming the file when it is missing, empty or undecodable.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such audio file")
    try:
        with sf.SoundFile(path) as f:
            rate = f.samplerate
            start = int(round(offset * rate))
            frames = -1 if duration is None else int(round(duration * rate))
            if start:
                f.seek(start)
            audio = f.read(frames, dtype="float32", always_2d=True)  # (samples, channels)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise DataError(f"{path}: cannot decode audio ({e})") from None
    if audio.shape[0] == 0:
        raise DataError(f"{path}: audio is empty")
    mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def audio_duration(path: str | Path) -> float:
    """Duration in seconds from the file header, without decoding."""
    try:
        return float(sf.info(str(path)).duration)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise DataError(f"{path}: cannot read audio header ({e})") from None
