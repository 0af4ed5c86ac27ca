"""Waveform transforms that lhotse applies lazily when a cut's audio is loaded, built on soxr.

lhotse's own `Resample` falls back to scipy and its `Narrowband` needs torchaudio; macasr
installs neither, and resamples everything else with soxr (macasr.audio), so these two
transforms do the same jobs with soxr and libsndfile's G.711 μ-law coder. Both are
`lhotse.augmentation.AudioTransform`s: samples (channels, samples) float32 in, same out.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr
from lhotse.audio import Recording
from lhotse.augmentation import AudioTransform
from lhotse.augmentation.torchaudio import Resample
from lhotse.cut import Cut
from lhotse.utils import Seconds, fastcopy

TELEPHONE_RATE = 8_000  # Hz: G.711 telephony samples at 8 kHz, so nothing above 4 kHz survives


def _resample(samples: np.ndarray, source: int, target: int) -> np.ndarray:
    """samples (channels, n) → (channels, ≈ n·target/source) float32, soxr's HQ filter."""
    if source == target:
        return samples.astype(np.float32, copy=False)
    out = soxr.resample(np.ascontiguousarray(samples.T, dtype=np.float32), source, target, quality="HQ")
    return np.ascontiguousarray(out.reshape(-1, samples.shape[0]).T)


def mu_law(samples: np.ndarray) -> np.ndarray:
    """G.711 μ-law round trip of 8 kHz audio (channels, n) → (channels, n) float32: 8 bits per
    sample, as a telephone network carries it (encoded and decoded by libsndfile). Samples are
    clipped to [-1, 1] first, as a codec clips."""
    clipped = np.clip(samples, -1.0, 1.0).T.astype(np.float32)
    with io.BytesIO() as buffer:
        sf.write(buffer, clipped, TELEPHONE_RATE, format="RAW", subtype="ULAW")
        buffer.seek(0)
        decoded = sf.read(buffer, dtype="float32", always_2d=True, format="RAW", subtype="ULAW",
                          samplerate=TELEPHONE_RATE, channels=clipped.shape[1])[0]
    return np.ascontiguousarray(decoded.T)


def narrowband(samples: np.ndarray, sampling_rate: int, mu_law_coded: bool = False) -> np.ndarray:
    """Telephone band: samples (channels, n) at `sampling_rate` → resampled to 8 kHz (soxr's
    anti-alias filter removes everything above 4 kHz), optionally μ-law coded. Returns 8 kHz audio."""
    band = _resample(samples, sampling_rate, TELEPHONE_RATE)
    return mu_law(band) if mu_law_coded else band


@dataclass
class SoxrResample(Resample):
    """lhotse's `Resample` (same fields and timestamp mapping) computed with soxr."""

    def __call__(self, samples: np.ndarray, *args, **kwargs) -> np.ndarray:
        return _resample(samples, self.source_sampling_rate, self.target_sampling_rate)


@dataclass
class Narrowband8k(AudioTransform):
    """Pass audio through the telephone band (see `narrowband`) and back to its own rate, so the
    cut keeps its sampling rate and length; `mu_law` adds G.711 μ-law coding at 8 kHz."""

    mu_law: bool = False

    def __call__(self, samples: np.ndarray, sampling_rate: int) -> np.ndarray:
        restored = _resample(narrowband(samples, sampling_rate, self.mu_law), TELEPHONE_RATE, sampling_rate)
        length = samples.shape[1]
        if restored.shape[1] < length:
            restored = np.pad(restored, ((0, 0), (0, length - restored.shape[1])))
        return restored[:, :length]

    def reverse_timestamps(self, offset: Seconds, duration: Seconds | None, sampling_rate: int | None) -> tuple[Seconds, Seconds | None]:
        return offset, duration  # length and timing are unchanged


def resample_recording(recording: Recording, sampling_rate: int) -> Recording:
    """`recording.resample(sampling_rate)` with the resampling done by soxr (see SoxrResample)."""
    out = recording.resample(sampling_rate)
    if out.transforms and isinstance(out.transforms[-1], Resample):
        last = out.transforms[-1]
        out.transforms[-1] = SoxrResample(last.source_sampling_rate, last.target_sampling_rate)
    return out


def resample_cut(cut: Cut, sampling_rate: int) -> Cut:
    """A cut with a recording (MonoCut, MultiCut) lazily resampled by soxr."""
    if cut.sampling_rate == sampling_rate:
        return cut
    return fastcopy(cut, recording=resample_recording(cut.recording, sampling_rate), features=None)


def append_transform(cut: Cut, transform: AudioTransform) -> Cut:
    """A copy of `cut` whose audio goes through `transform` after everything already applied:
    a MixedCut applies it to the mix, any other cut to its recording's audio."""
    if hasattr(cut, "tracks"):  # MixedCut
        return fastcopy(cut, transforms=[*(cut.transforms or []), transform])
    recording = fastcopy(cut.recording, transforms=[*(cut.recording.transforms or []), transform])
    return fastcopy(cut, recording=recording)
