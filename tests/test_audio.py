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
