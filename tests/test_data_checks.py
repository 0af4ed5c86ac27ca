"""Clips that are read but look wrong, clips that cannot be used, and how users see both."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from rich.console import Console
from typer.testing import CliRunner

from conftest import noise
from test_cli import ckpt  # noqa: F401  (the untrained tiny checkpoint fixture)
from macasr.data.collate import Batch
from macasr.data.loader import CutDataset, check_bad_clips
from macasr.data.manifest import open_cuts
from macasr.errors import DataError
from macasr.model.encoders import WhisperFeaturizer

runner = CliRunner()
# A coarse but real log-mel featurizer (no checkpoint needed): flat filters over 201 FFT bins.
featurize = WhisperFeaturizer(np.full((201, 80), 0.01, dtype=np.float32), n_fft=400, hop_length=160, sampling_rate=16_000)


def clip(folder: Path, name: str, seconds: float, peak: float = 0.1, nan_at: float | None = None, seed: int = 0) -> str:
    samples = noise(seconds, seed) * (peak / 0.1)
    if nan_at is not None:
        samples[int(nan_at * 16_000)] = np.nan
    sf.write(folder / name, samples, 16_000, subtype="FLOAT")
    return str(folder / name)


def manifest(folder: Path, rows: list[dict]) -> Path:
    path = folder / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_all(path: Path, **kwargs: object) -> Batch:
    """Every cut of a manifest through the dataset, as one batch."""
    return CutDataset(featurize, **kwargs)[open_cuts(path)]


@pytest.mark.parametrize(("declared", "offset", "why"), [
    (1.0, None, "the file is 2.00 s long but the manifest says duration 1 s (more than 10% apart)"),
    (1.0, 1.5, "offset 1.5 s + duration 1 s runs past the end of the file (2.00 s)"),
    (1.0, 2.5, "offset 2.5 s is beyond the end of the file (2.00 s)"),
    (1.85, None, None),  # within 10 %
    (1.0, 0.5, None),  # a segment inside the file reads what it declares
    (1.0, 0.0, None),  # ... also the first segment of a recording
])
def test_a_length_far_from_the_declared_duration_is_a_bad_clip_named_with_its_line(
    declared: float, offset: float | None, why: str | None, tmp_path: Path,
) -> None:
    audio = clip(tmp_path, "a.wav", 2.0)
    row = {"audio": audio, "text": "x", "duration": declared, "id": "u1"} | ({"offset": offset} if offset is not None else {})
    m = manifest(tmp_path, [row])
    batch = read_all(m)
    if why is None:
        assert batch.ids == ["u1"] and not batch.bad_clips
    else:
        assert batch.ids == [] and batch.skipped == [f"{audio}: {why} (manifest {m}:1)"]


@pytest.mark.parametrize("seconds", [None, (0.8, 0.5)], ids=["whole", "segment"])
def test_a_clip_with_a_nan_sample_is_skipped_or_stops_the_run(seconds: tuple[float, float] | None, tmp_path: Path) -> None:
    offset, duration = seconds or (None, 2.0)
    audio = clip(tmp_path, "nan.wav", 2.0, nan_at=1.0)
    m = manifest(tmp_path, [{"audio": audio, "text": "x", "duration": duration} | ({"offset": offset} if offset else {})])
    batch = read_all(m)
    (line,) = batch.skipped
    assert line.startswith(f"{audio}: 1 of ") and "not finite (1 NaN, 0 infinite)" in line and line.endswith(f"(manifest {m}:1)")
    with pytest.raises(DataError, match="not finite"):
        check_bad_clips(batch, "error")


def test_a_segment_at_offset_zero_reads_only_its_duration(tmp_path: Path) -> None:
    clip(tmp_path, "long.wav", 3.0)
    m = manifest(tmp_path, [{"audio": "long.wav", "text": "first words", "duration": 1.0, "offset": 0},
                            {"audio": "long.wav", "text": "the whole file", "duration": 3.0}])
    batch = read_all(m)
    assert batch.durations == [1.0, 3.0] and batch.texts == ["first words", "the whole file"] and not batch.bad_clips


def test_training_reports_each_bad_clip_once_and_writes_it_once_to_bad_clips_jsonl(tiny_config, corpus, tmp_path: Path) -> None:
    from macasr import config as config_module
    from macasr.model.build import build_model
    from macasr.train.engine import BAD_CLIPS_FILE, Trainer
    from macasr.train.run import training_sets

    rows = [{"audio": clip(tmp_path, f"{i}.wav", 1.0), "text": "hello world", "duration": 1.0} for i in range(3)]
    rows.append({"audio": str(tmp_path / "gone.wav"), "text": "hello world", "duration": 1.0})
    m = manifest(tmp_path, rows)
    cfg = config_module.replace(tiny_config, **{"data.train": [str(m)], "data.batch_size": 2,
                                                "train.output_dir": str(tmp_path / "runs"), "train.name": "run"})
    console = Console(record=True, width=400)
    trainer = Trainer(cfg, build_model(cfg), *training_sets(cfg), torch.device("cpu"), "fp32", console)
    batches = trainer._batches()
    for _ in range(6):  # three epochs of two batches (one holds a single clip)
        next(batches)
    assert trainer.epoch >= 2
    printed = [line for line in console.export_text().splitlines() if line.startswith("skipped clip:")]
    assert printed == [f"skipped clip: {tmp_path / 'gone.wav'}: no such audio file (manifest {m}:4)"]
    records = [json.loads(line) for line in (cfg.run_dir / BAD_CLIPS_FILE).read_text().splitlines()]
    assert records == [{"origin": f"{m}:4", "id": "m-000004", "audio": str(tmp_path / "gone.wav"), "why": "no such audio file"}]


def test_on_bad_clip_error_stops_training_naming_the_file_and_keeps_what_was_trained(tiny_config, corpus, tmp_path: Path) -> None:
    from macasr import config as config_module
    from macasr.train.run import train

    rows = [{"audio": clip(tmp_path, f"{i}.wav", 1.0, seed=i), "text": "hello world", "duration": 1.0} for i in range(8)]
    rows[5] = {"audio": clip(tmp_path, "nan.wav", 1.0, nan_at=0.5), "text": "hello world", "duration": 1.0}
    m = manifest(tmp_path, rows)
    cfg = config_module.replace(tiny_config, **{
        "data.train": [str(m)], "data.batch_size": 1, "data.on_bad_clip": "error", "train.max_steps": 20,
        "train.valid_every": 100, "train.warmup_steps": 0, "train.output_dir": str(tmp_path / "runs"), "train.name": "run",
    })
    with pytest.raises(DataError) as error:
        train(cfg, Console(file=io.StringIO()))
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'nan.wav'}: 1 of 16,000 samples are not finite")
    assert f"(manifest {m}:6)" in message
    saved = torch.load(cfg.run_dir / "last.pt", weights_only=True)
    assert saved["step"] >= 1 and message.endswith(f"resumable from {cfg.run_dir / 'last.pt'} (step {saved['step']})")


# ---------------------------------------------------------------- the CLI


def test_transcribe_names_a_file_with_a_nan_sample_and_fails(ckpt: Path, tmp_path: Path) -> None:
    from macasr.cli import app

    bad = Path(clip(tmp_path, "nan.wav", 1.8, nan_at=0.5))
    good = Path(clip(tmp_path, "good.wav", 1.0))
    result = runner.invoke(app, ["transcribe", str(bad), str(good), "--ckpt", str(ckpt), "--format", "json", "--vad", "off"])  # good: noise
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


