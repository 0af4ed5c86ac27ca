"""Clips that are read but look wrong, clips that cannot be used, and how users see both."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from rich.console import Console
from typer.testing import CliRunner

from conftest import noise
from test_cli import ckpt  # noqa: F401  (the untrained tiny checkpoint fixture)
from macasr.data.loader import SpeechDataset, build_loader
from macasr.data.manifest import Utterance, load_manifest
from macasr.errors import DataError
from macasr.model.encoders import WhisperFeaturizer

runner = CliRunner()
# A coarse but real log-mel featurizer (no checkpoint needed): flat filters over 201 FFT bins.
featurize = WhisperFeaturizer(np.full((201, 80), 0.01, dtype=np.float32), n_fft=400, hop_length=160, sampling_rate=16_000)


def clip(folder: Path, name: str, seconds: float, peak: float = 0.1, nan_at: float | None = None) -> str:
    samples = noise(seconds) * (peak / 0.1)
    if nan_at is not None:
        samples[int(nan_at * 16_000)] = np.nan
    sf.write(folder / name, samples, 16_000, subtype="FLOAT")
    return str(folder / name)


def utterance(audio: str, duration: float, offset: float | None = None, id: str = "u1") -> Utterance:
    return Utterance(id=id, audio=audio, text="x", duration=duration, offset=offset)


@pytest.mark.parametrize(("declared", "offset", "warned"), [
    (1.0, None, "decoded 2.00 s but the manifest says duration 1 s; batching and hours use the manifest's value"),
    (4.0, None, "decoded 2.00 s but the manifest says duration 4 s; batching and hours use the manifest's value"),
    (1.0, 1.5, "offset 1.5 s + duration 1 s runs past the end of the file (2.00 s); read 0.50 s"),
    (2.5, 0.0, "offset 0 s + duration 2.5 s runs past the end of the file (2.00 s); read 2.00 s"),
    (1.85, None, None),  # within 10 %
    (2.15, None, None),
    (1.0, 0.5, None),  # a segment inside the file reads what it declares
    (1.0, 0.0, None),  # ... also the first segment of a recording
])
def test_a_length_far_from_the_declared_duration_is_a_warning(
    declared: float, offset: float | None, warned: str | None, tmp_path: Path,
) -> None:
    audio = clip(tmp_path, "a.wav", 2.0)
    example = SpeechDataset([utterance(audio, declared, offset)], featurize)[0]
    assert not isinstance(example, str)  # the clip is still used
    assert example.warnings == ([f"{audio} (id u1): {warned}"] if warned else [])


def test_batches_carry_their_clips_warnings(tmp_path: Path) -> None:
    utterances = [utterance(clip(tmp_path, "a.wav", 1.0), 1.0, id="ok"), utterance(clip(tmp_path, "b.wav", 1.0), 3.0, id="off")]
    batch = next(iter(build_loader(utterances, featurize, batch_size=4, shuffle=False)))
    assert sorted(batch.ids) == ["off", "ok"] and len(batch.warnings) == 1 and "(id off)" in batch.warnings[0]


@pytest.mark.parametrize("seconds", [None, (0.8, 0.5)], ids=["whole", "segment"])
def test_a_clip_with_a_nan_sample_is_skipped_or_stops_the_run(seconds: tuple[float, float] | None, tmp_path: Path) -> None:
    offset, duration = seconds or (None, 2.0)
    u = utterance(clip(tmp_path, "nan.wav", 2.0, nan_at=1.0), duration, offset)
    line = SpeechDataset([u], featurize)[0]
    assert isinstance(line, str) and line.startswith(f"{u.audio}: 1 of ") and "not finite (1 NaN, 0 infinite)" in line
    with pytest.raises(DataError, match="not finite"):
        SpeechDataset([u], featurize, on_bad_clip="error")[0]


def test_features_that_overflow_make_a_bad_clip(tmp_path: Path) -> None:
    loud = utterance(clip(tmp_path, "loud.wav", 1.0, peak=1e20), 1.0)  # finite samples, infinite power spectrum
    line = SpeechDataset([loud], featurize)[0]
    peak = np.abs(sf.read(loud.audio)[0]).max()
    assert line == f"{loud.audio}: its features are not finite (samples peak at {peak:.3g}); expected samples of about -1 to 1"
    fine = SpeechDataset([utterance(clip(tmp_path, "fine.wav", 1.0, peak=1e3), 1.0)], featurize)[0]
    assert not isinstance(fine, str) and torch.isfinite(fine.features).all()


def test_training_prints_each_warning_once(tmp_path: Path) -> None:
    from macasr.train.engine import Trainer

    utterances = [utterance(clip(tmp_path, f"{i}.wav", 1.0), 1.0 if i else 5.0, id=f"u{i}") for i in range(3)]
    console = Console(record=True, width=400)
    trainer = types.SimpleNamespace(loader=build_loader(utterances, featurize, batch_size=2, shuffle=True),
                                    epoch=0, batches_in_epoch=0, reported=set(), console=console)
    trainer._report_once = lambda label, lines: Trainer._report_once(trainer, label, lines)  # type: ignore[arg-type]
    batches = Trainer._batches(trainer)  # type: ignore[arg-type]
    for _ in range(6):  # three epochs of two batches
        next(batches)
    printed = [line for line in console.export_text().splitlines() if line.startswith("warning:")]
    assert printed == [f"warning: {utterances[0].audio} (id u0): decoded 1.00 s but the manifest says duration 5 s; "
                       "batching and hours use the manifest's value"]


# ---------------------------------------------------------------- the CLI


def test_transcribe_names_a_file_with_a_nan_sample_and_fails(ckpt: Path, tmp_path: Path) -> None:
    from macasr.cli import app

    bad = Path(clip(tmp_path, "nan.wav", 1.8, nan_at=0.5))
    good = Path(clip(tmp_path, "good.wav", 1.0))
    result = runner.invoke(app, ["transcribe", str(bad), str(good), "--ckpt", str(ckpt), "--format", "json"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"error: {bad}: 1 of 28,800 samples are not finite (1 NaN, 0 infinite); "
                                          "expected finite samples (about -1 to 1)"]
    lines = [json.loads(line) for line in result.stdout.splitlines()]  # one object per input, in order
    assert [line["audio"] for line in lines] == [str(bad), str(good)]
    assert lines[0]["text"] is None and lines[0]["error"] == result.stderr.splitlines()[0].removeprefix("error: ")
    assert lines[1]["stop"] in ("end", "repeat", "max_tokens") and "error" not in lines[1]


def test_eval_lists_every_bad_manifest_line_before_decoding(ckpt: Path, tmp_path: Path) -> None:
    from macasr.cli import app

    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"audio": "a.wav", "text": "hi", "duration": NaN}\n'
                        '{"audio": "b.wav", "text": "x", "duration": 1, "offset": "abc"}\n')
    result = runner.invoke(app, ["eval", "--ckpt", str(ckpt), "--manifest", str(manifest)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.splitlines() == [
        f"error: {manifest}:1: `duration` = NaN: expected seconds as a finite positive number",
        f'error: {manifest}:2: `offset` = "abc": expected seconds as a finite number >= 0',
    ]


def test_a_segment_at_offset_zero_reads_only_its_duration(tmp_path: Path) -> None:
    m = tmp_path / "m.jsonl"
    clip(tmp_path, "long.wav", 3.0)
    m.write_text('{"audio": "long.wav", "text": "first words", "duration": 1.0, "offset": 0}\n'
                 '{"audio": "long.wav", "text": "the whole file", "duration": 3.0}\n')
    first, whole = SpeechDataset(load_manifest(m), featurize)
    assert (first.duration, first.warnings) == (1.0, []) and (whole.duration, whole.warnings) == (3.0, [])
