"""Manifests, bad clips and batching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf

from conftest import noise
from macasr.data.loader import DurationBatchSampler, SpeechDataset, build_loader
from macasr.data.manifest import load_manifest
from macasr.errors import DataError


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_relative_audio_paths_resolve_from_the_manifest_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    m = write_lines(tmp_path / "sub" / "m.jsonl", [{"audio": "a.wav", "text": "hi", "duration": 1}])
    (u,) = load_manifest(m)
    assert u.audio == str(tmp_path.resolve() / "sub" / "a.wav") and u.id == "m-000001" and u.duration == 1.0


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "not valid JSON"),
    ('{"audio": "a.wav", "text": 3, "duration": 1}', "`text` has the wrong type (int)"),
    ('{"audio": "a.wav", "text": "x", "duration": 0}', "`duration` must be positive"),
    ("[1, 2]", "expected a JSON object"),
])
def test_bad_manifest_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    m = write_lines(tmp_path / "m.jsonl", [{"audio": "a.wav", "text": "ok", "duration": 1}, line])
    with pytest.raises(DataError) as e:
        load_manifest(m)
    assert str(e.value).startswith(f"{m}:2: ") and message in str(e.value)


def test_bad_clips_are_skipped_and_reported_or_stop_the_run(tmp_path: Path) -> None:
    sf.write(tmp_path / "good.wav", noise(0.5), 16_000)
    m = write_lines(tmp_path / "m.jsonl", [
        {"audio": "good.wav", "text": "a", "duration": 0.5}, {"audio": "gone.wav", "text": "b", "duration": 0.5},
    ])
    utterances = load_manifest(m)
    featurize = lambda wave: __import__("torch").zeros(80, len(wave) // 160)  # noqa: E731
    batch = next(iter(build_loader(utterances, featurize, batch_size=4, shuffle=False)))
    assert batch.ids == ["m-000001"] and len(batch.skipped) == 1 and str(tmp_path / "gone.wav") in batch.skipped[0]
    with pytest.raises(DataError, match="gone.wav: no such audio file"):
        SpeechDataset(utterances, featurize, on_bad_clip="error")[1]


def test_batches_respect_count_and_seconds_and_cover_every_clip_once() -> None:
    durations = [1.0 + (i % 7) for i in range(103)]
    sampler = DurationBatchSampler(durations, batch_size=8, max_batch_seconds=30.0, shuffle=True, seed=3)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(103))
    assert all(len(b) <= 8 and (len(b) == 1 or sum(durations[i] for i in b) <= 30.0) for b in batches)
    assert batches == list(DurationBatchSampler(durations, 8, 30.0, True, seed=3))  # seeded
    sampler.set_epoch(1)
    assert list(sampler) != batches  # a new order each epoch


def test_ranks_share_the_epoch_without_overlap() -> None:
    durations = [float(i % 5 + 1) for i in range(50)]
    shards = [list(DurationBatchSampler(durations, 4, shuffle=True, seed=0, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1])
    seen = [i for shard in shards for b in shard for i in b]
    assert len(seen) == len(set(seen))


def test_resume_position_skips_consumed_batches() -> None:
    durations = [float(i % 5 + 1) for i in range(40)]
    full = list(DurationBatchSampler(durations, 4, seed=0))
    sampler = DurationBatchSampler(durations, 4, seed=0)
    sampler.set_epoch(0, start=3)
    assert list(sampler) == full[3:]


def test_spec_augment_masks_bands_and_spans_without_touching_the_input() -> None:
    import torch

    from macasr.data.augment import spec_augment

    torch.manual_seed(0)
    features = torch.randn(80, 200)
    original = features.clone()
    masked = [spec_augment(features) for _ in range(20)]
    assert torch.equal(features, original)  # the input is not modified
    changed = [(m != features) for m in masked]
    assert all(m.shape == features.shape for m in masked)
    assert any(c.all(dim=1).any() for c in changed)  # a whole frequency band masked
    assert any(c.all(dim=0).any() for c in changed)  # a whole time span masked
    assert all(c.float().mean() < 0.5 for c in changed)  # most of the signal survives


def test_spec_augment_leaves_a_waveform_whole_in_frequency() -> None:
    import torch

    from macasr.data.augment import spec_augment

    torch.manual_seed(0)
    wave = torch.randn(1, 16_000)
    for _ in range(20):
        changed = spec_augment(wave) != wave
        assert changed.float().mean() <= 0.1  # only time spans, never the one "band"
