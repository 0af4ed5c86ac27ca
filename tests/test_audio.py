"""Audio in any common format, rate and channel count reads as the same 16 kHz mono signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from macasr.audio import SAMPLE_RATE, load_audio
from macasr.errors import DataError

FORMATS = [("wav", "PCM_16"), ("wav", "PCM_24"), ("wav", "FLOAT"), ("flac", "PCM_16"), ("ogg", "VORBIS"), ("mp3", "MPEG_LAYER_III")]


def tone(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.mark.parametrize(("ext", "subtype"), FORMATS, ids=[f"{e}-{s}" for e, s in FORMATS])
def test_formats_rates_and_channels_become_16k_mono(ext: str, subtype: str, tmp_path: Path) -> None:
    if subtype not in sf.available_subtypes(ext.upper()):
        pytest.skip(f"libsndfile here cannot write {ext}/{subtype}")
    rate = 44_100 if ext != "mp3" else 48_000
    stereo = np.stack([tone(1.0, rate), tone(1.0, rate)], axis=1)
    path = tmp_path / f"a.{ext}"
    sf.write(path, stereo, rate, subtype=subtype)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - SAMPLE_RATE) < 0.06 * SAMPLE_RATE  # lossy codecs pad a little
    reference = tone(1.0, SAMPLE_RATE)
    middle = slice(4000, 12000)
    if ext in ("ogg", "mp3"):  # lossy and delayed: compare loudness, not samples
        assert abs(np.sqrt(np.mean(audio[middle] ** 2)) - np.sqrt(np.mean(reference[middle] ** 2))) < 0.02
    else:
        assert np.abs(audio[middle] - reference[middle]).max() < 0.02


def test_segment_reads_only_the_requested_seconds(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    sf.write(path, tone(3.0, 22_050), 22_050)
    assert abs(len(load_audio(path, offset=1.0, duration=0.5)) - 8000) <= 1


@pytest.mark.parametrize(("content", "reason"), [(None, "no such audio file"), (b"", "cannot decode"), (b"RIFFjunkjunk" * 10, "cannot decode")])
def test_bad_files_name_the_path(content: bytes | None, reason: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.wav"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=reason) as e:
        load_audio(path)
    assert str(e.value).startswith(str(path))


def test_44k_stereo_and_16k_mono_transcribe_identically(tiny_config, tmp_path: Path) -> None:
    from macasr.data import synth
    from macasr.infer.transcribe import Transcriber
    from macasr.model.build import build_model

    speech = synth.synthesize("please call john at seven", "en-us")
    mono = tmp_path / "mono16k.wav"
    sf.write(mono, speech, SAMPLE_RATE, subtype="PCM_16")
    hi = soxr.resample(speech, SAMPLE_RATE, 44_100)
    stereo = tmp_path / "stereo44k.flac"
    sf.write(stereo, np.stack([hi, hi], axis=1), 44_100, subtype="PCM_24")
    model = build_model(tiny_config).eval()
    transcriber = Transcriber(model, tiny_config, model.prefix_ids.device, "fp32")
    first, second = transcriber.transcribe([mono, stereo])
    assert first.error is None and second.error is None
    assert first.text == second.text


def write_float(path: Path, samples: np.ndarray, rate: int = SAMPLE_RATE, subtype: str = "FLOAT") -> Path:
    sf.write(path, samples, rate, subtype=subtype)
    return path


NON_FINITE = [  # (bad value, subtype, rate, channels)
    (np.nan, "FLOAT", SAMPLE_RATE, 1), (np.inf, "FLOAT", SAMPLE_RATE, 1), (-np.inf, "FLOAT", SAMPLE_RATE, 1),
    (np.nan, "DOUBLE", SAMPLE_RATE, 1), (np.nan, "FLOAT", 44_100, 1), (np.nan, "FLOAT", SAMPLE_RATE, 2),
]


@pytest.mark.parametrize(("value", "subtype", "rate", "channels"), NON_FINITE, ids=lambda v: str(v))
def test_one_non_finite_sample_makes_a_bad_clip(value: float, subtype: str, rate: int, channels: int, tmp_path: Path) -> None:
    samples = np.stack([tone(1.0, rate)] * channels, axis=1)
    samples[rate // 2, 0] = value
    path = write_float(tmp_path / "a.wav", samples, rate, subtype)
    kind = "1 NaN, 0 infinite" if np.isnan(value) else "0 NaN, 1 infinite"
    with pytest.raises(DataError) as e:
        load_audio(path)
    assert str(e.value).startswith(f"{path}: 1 of {rate:,} samples are not finite ({kind})")


def test_a_non_finite_sample_counts_only_inside_the_segment_read(tmp_path: Path) -> None:
    samples = tone(3.0, SAMPLE_RATE)
    samples[int(1.2 * SAMPLE_RATE)] = np.nan
    path = write_float(tmp_path / "a.wav", samples)
    with pytest.raises(DataError, match="1 of 8,000 samples are not finite"):
        load_audio(path, offset=1.0, duration=0.5)
    assert np.isfinite(load_audio(path, offset=2.0, duration=0.5)).all()
    assert np.isfinite(load_audio(path, offset=0.0, duration=1.0)).all()


def test_loud_but_finite_audio_is_not_bad(tmp_path: Path) -> None:
    loud = write_float(tmp_path / "loud.wav", tone(1.0, 44_100) * 3e4, 44_100)  # far past full scale, still usable
    assert np.isfinite(load_audio(loud)).all() and np.abs(load_audio(loud)).max() > 1e3
    flac = tmp_path / "full.flac"
    sf.write(flac, np.sign(tone(1.0, SAMPLE_RATE)), SAMPLE_RATE, subtype="PCM_16")  # integer formats hold no NaN
    assert np.isfinite(load_audio(flac)).all()


def test_a_double_sample_beyond_float32_is_named_not_passed_on_as_inf(tmp_path: Path) -> None:
    samples = tone(1.0, SAMPLE_RATE).astype(np.float64)
    samples[100] = 1e300  # finite in the file, infinite as the float32 every model takes
    path = write_float(tmp_path / "a.wav", samples, subtype="DOUBLE")
    with pytest.raises(DataError, match=r"samples up to 1e\+300 overflow 32-bit float") as e:
        load_audio(path)
    assert str(e.value).startswith(str(path))


@pytest.mark.parametrize("offset", [2.0, 12.0])
def test_an_offset_at_or_beyond_the_end_says_so(offset: float, tmp_path: Path) -> None:
    path = write_float(tmp_path / "a.wav", tone(2.0, 22_050), 22_050)
    with pytest.raises(DataError) as e:
        load_audio(path, offset=offset, duration=1.0)
    assert str(e.value) == f"{path}: offset {offset} s is beyond the end of the file (2.00 s)"


@pytest.mark.parametrize(("offset", "duration", "message"), [
    (-1.0, 1.0, "offset -1.0: expected seconds as a finite number >= 0"),
    (float("nan"), 1.0, "offset nan: expected seconds as a finite number >= 0"),
    ("abc", 1.0, "offset 'abc': expected seconds as a finite number >= 0"),
    (0.5, 0.0, "duration 0.0: expected seconds as a finite positive number"),
    (0.5, float("inf"), "duration inf: expected seconds as a finite positive number"),
])
def test_a_bad_segment_is_named(offset: object, duration: object, message: str, tmp_path: Path) -> None:
    path = write_float(tmp_path / "a.wav", tone(2.0, SAMPLE_RATE))
    with pytest.raises(DataError) as e:
        load_audio(path, offset=offset, duration=duration)  # type: ignore[arg-type]
    assert str(e.value) == f"{path}: {message}"
