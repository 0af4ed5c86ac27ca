"""Cuts → Batches: reading and checking clips, lhotse sampling, mixing, filters, and the resumable data position."""

from __future__ import annotations

import io
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

from conftest import noise
from macasr.data.collate import BadClip
from macasr.data.loader import (
    CutDataset, DurationRange, TokenLimit, WithEpoch, build_loader, check_bad_clips, eval_sampler, indexed, mix_streams,
    restore_sampler, sampler_state, source_stream, train_sampler,
)
from macasr.errors import DataError
from macasr.model.decoding import DecodingOptions
from macasr.model.encoders import WhisperFeaturizer

# A coarse but real log-mel featurizer (no checkpoint needed): flat filters over 201 FFT bins.
featurize = WhisperFeaturizer(np.full((201, 80), 0.01, dtype=np.float32), n_fft=400, hop_length=160, sampling_rate=16_000)


def wav(folder: Path, name: str, samples: np.ndarray, rate: int = 16_000) -> Path:
    sf.write(folder / name, samples, rate, subtype="FLOAT")
    return folder / name


def cut(audio: Path, id: str = "c1", start: float = 0.0, duration: float | None = None, text: str = "hello world",
        **custom: object) -> MonoCut:
    """A cut as the manifest readers make one: the file's recording, one supervision, an origin."""
    recording = Recording.from_file(audio, recording_id=id)
    duration = recording.duration - start if duration is None else duration
    supervision = SupervisionSegment(id=id, recording_id=id, start=0.0, duration=duration, text=text)
    return MonoCut(id=id, start=start, duration=duration, channel=recording.channel_ids, recording=recording,
                   supervisions=[supervision], custom={"origin": f"m.jsonl:{id}", **custom})


def fake_cuts(durations: list[float], folder: Path) -> CutSet:
    """Cuts of the given durations over one long file (sampling never reads audio)."""
    audio = wav(folder, "long.wav", np.zeros(int((max(durations) + 1) * 16_000), dtype=np.float32))
    return CutSet.from_cuts(cut(audio, f"c{i:03d}", duration=d) for i, d in enumerate(durations))


def ids(batch: CutSet) -> list[str]:
    return [c.id for c in batch]


# ---------------------------------------------------------------- reading one clip


def test_audio_is_read_as_16khz_mono_whatever_its_rate_and_channels(tmp_path: Path) -> None:
    stereo = np.stack([noise(1.5), -noise(1.5)], axis=1)[::2]  # 8 kHz, two channels cancelling out
    batch = CutDataset(featurize, lambda text: [len(text)])[CutSet.from_cuts([cut(wav(tmp_path, "a.wav", stereo, 8_000))])]
    assert batch.ids == ["c1"] and batch.durations == [1.5] and not batch.bad_clips
    assert batch.features.shape == (1, 80, 150)  # 1.5 s at 16 kHz, hop 160
    assert torch.allclose(batch.features, batch.features.min())  # mono mix of x and -x is silence
    assert batch.targets.tolist() == [[11]] and batch.texts == ["hello world"]


@pytest.mark.parametrize(("start", "duration", "read"), [(0.5, 1.0, 1.0), (1.0, 1.05, 1.0), (0.0, 2.15, 2.0)])
def test_a_cut_inside_its_file_or_within_10_percent_of_its_end_reads_what_exists(
    start: float, duration: float, read: float, tmp_path: Path,
) -> None:
    audio = wav(tmp_path, "a.wav", noise(2.0))
    batch = CutDataset(featurize)[CutSet.from_cuts([cut(audio, start=start, duration=duration)])]
    assert batch.ids == ["c1"] and batch.durations == [pytest.approx(read)] and not batch.warnings


def bad(tmp_path: Path, kind: str) -> MonoCut:
    if kind == "missing":
        c = cut(wav(tmp_path, "gone.wav", noise(1.0)))
        (tmp_path / "gone.wav").unlink()
        return c
    if kind == "problem":
        return cut(wav(tmp_path, "p.wav", noise(1.0)), problem="cannot read audio header (not a WAV file)")
    if kind == "nan":
        samples = noise(1.0)
        samples[100] = np.nan
        return cut(wav(tmp_path, "nan.wav", samples))
    if kind == "short":
        return cut(wav(tmp_path, "short.wav", noise(0.01)))
    if kind == "beyond":
        return cut(wav(tmp_path, "b.wav", noise(1.0)), start=1.5, duration=1.0)
    if kind == "past_end":
        return cut(wav(tmp_path, "e.wav", noise(1.0)), start=0.5, duration=1.0)
    raise ValueError(kind)


@pytest.mark.parametrize(("kind", "why"), [
    ("missing", "no such audio file"),
    ("problem", "cannot read audio header (not a WAV file)"),
    ("nan", "1 of 16,000 samples are not finite (1 NaN, 0 infinite); expected finite samples (about -1 to 1)"),
    ("short", "160 samples (10.0 ms) is shorter than the STFT window of 400 samples; expected a longer clip"),
    ("beyond", "offset 1.5 s is beyond the end of the file (1.00 s)"),
    ("past_end", "offset 0.5 s + duration 1 s runs past the end of the file (1.00 s)"),
])
def test_a_bad_clip_is_left_out_and_named_with_its_file_and_manifest_line(kind: str, why: str, tmp_path: Path) -> None:
    good = cut(wav(tmp_path, "good.wav", noise(1.0)), id="good")
    broken = bad(tmp_path, kind)
    batch = CutDataset(featurize)[CutSet.from_cuts([good, broken])]
    audio = broken.recording.sources[0].source
    assert batch.ids == ["good"]
    assert batch.bad_clips == [BadClip(origin="m.jsonl:c1", id="c1", audio=audio, why=why)]
    assert batch.skipped == [f"{audio}: {why} (manifest m.jsonl:c1)"]
    check_bad_clips(batch, "skip")
    with pytest.raises(DataError, match=f"^{re.escape(batch.skipped[0])}$"):
        check_bad_clips(batch, "error")


def test_an_undecodable_file_is_a_bad_clip(tmp_path: Path) -> None:
    c = cut(wav(tmp_path, "junk.wav", noise(1.0)))
    (tmp_path / "junk.wav").write_bytes(b"RIFF" + bytes(200))  # the header read before is gone
    (clip,) = CutDataset(featurize)[CutSet.from_cuts([c])].bad_clips
    assert clip.audio == str(tmp_path / "junk.wav") and clip.why.startswith("cannot decode audio (")
    assert "\n" not in clip.why


def test_features_that_overflow_make_a_bad_clip(tmp_path: Path) -> None:
    loud = cut(wav(tmp_path, "loud.wav", noise(1.0) * 1e19))  # finite samples, infinite power spectrum
    (clip,) = CutDataset(featurize)[CutSet.from_cuts([loud])].bad_clips
    assert clip.why.startswith("its features are not finite (samples peak at ")


# ---------------------------------------------------------------- hooks


def test_augment_gets_each_cut_and_the_epoch_before_the_audio_is_read(tmp_path: Path) -> None:
    seen = []

    def louder(c: MonoCut, epoch: int) -> MonoCut:
        seen.append((c.id, epoch))
        return c.perturb_volume(factor=10.0)

    cuts = CutSet.from_cuts([cut(wav(tmp_path, "a.wav", noise(1.0)))])
    plain = CutDataset(featurize)[cuts].features
    louder_features = CutDataset(featurize, augment=louder)[cuts, 3].features
    assert seen == [("c1", 3)]
    assert torch.allclose(louder_features, plain + 0.5, atol=1e-3)  # x10 amplitude: log10 power +2, Whisper scales by 1/4


def test_frames_from_gives_an_encoded_batch_without_reading_audio(tmp_path: Path) -> None:
    c = cut(wav(tmp_path, "a.wav", noise(1.0)))
    (tmp_path / "a.wav").unlink()  # no audio is read
    frames = {"c1": torch.arange(12.0).reshape(4, 3)}  # (T, D)
    batch = CutDataset(featurize, frames_from=lambda cut: frames[cut.id])[CutSet.from_cuts([c])]
    assert batch.encoded and batch.features.shape == (1, 3, 4) and batch.feature_lengths.tolist() == [4]
    assert torch.equal(batch.features[0], frames["c1"].T) and not batch.bad_clips


def test_a_cut_without_cached_frames_is_a_bad_clip(tmp_path: Path) -> None:
    def frames_from(c: MonoCut) -> torch.Tensor:
        raise DataError(f"{c.id}: not in the feature cache; rebuild it with macasr cache build")

    (clip,) = CutDataset(featurize, frames_from=frames_from)[CutSet.from_cuts([cut(wav(tmp_path, "a.wav", noise(1.0)))])].bad_clips
    assert clip.why == "c1: not in the feature cache; rebuild it with macasr cache build"


def test_workers_build_the_same_batches(tmp_path: Path) -> None:
    cuts = CutSet.from_cuts(cut(wav(tmp_path, f"{i}.wav", noise(0.5 + i / 10, seed=i)), f"c{i}") for i in range(4))
    sampler = eval_sampler(list(indexed(cuts)), batch_size=2)
    here = list(build_loader(CutDataset(featurize), sampler, num_workers=0))
    there = list(build_loader(CutDataset(featurize), sampler, num_workers=1))
    assert [b.ids for b in here] == [b.ids for b in there] == [["c3", "c2"], ["c1", "c0"]]  # longest first
    assert all(torch.equal(a.features, b.features) for a, b in zip(here, there))
    assert [b.indices for b in here] == [[3, 2], [1, 0]]  # positions in the set, to put results back


# ---------------------------------------------------------------- sampling


def test_the_sampler_caps_seconds_and_count_and_covers_every_cut_once_per_epoch(tmp_path: Path) -> None:
    durations = [1.0 + (i % 7) for i in range(103)]
    cuts = fake_cuts(durations, tmp_path)
    sampler = train_sampler(cuts, max_batch_seconds=30.0, batch_size=8, num_buckets=4, seed=3)
    batches = [ids(b) for b in sampler]
    by_id = {f"c{i:03d}": d for i, d in enumerate(durations)}
    assert sorted(i for b in batches for i in b) == sorted(by_id)
    assert all(len(b) <= 8 and sum(by_id[i] for i in b) <= 30.0 for b in batches)
    again = train_sampler(cuts, max_batch_seconds=30.0, batch_size=8, num_buckets=4, seed=3)
    assert [ids(b) for b in again] == batches  # seeded
    sampler.set_epoch(1)
    assert [ids(b) for b in sampler] != batches  # a new order each epoch


def test_ranks_get_disjoint_batches_of_the_same_epoch(tmp_path: Path) -> None:
    cuts = fake_cuts([float(i % 5 + 1) for i in range(50)], tmp_path)
    shards = [[ids(b) for b in train_sampler(cuts, max_batch_seconds=10.0, num_buckets=3, rank=r, world_size=2)]
              for r in range(2)]
    assert len(shards[0]) == len(shards[1])
    seen = [i for shard in shards for b in shard for i in b]
    assert len(seen) == len(set(seen))


def test_a_resumed_sampler_draws_the_batch_an_uninterrupted_one_draws_next(tmp_path: Path) -> None:
    cuts = fake_cuts([1.0 + (i % 9) / 2 for i in range(80)], tmp_path)

    def make():
        return train_sampler(cuts, max_batch_seconds=12.0, num_buckets=4, seed=7)

    uninterrupted = make()
    uninterrupted.set_epoch(1)
    expected = [ids(b) for b in uninterrupted]
    interrupted = make()
    interrupted.set_epoch(1)
    drawn = iter(interrupted)
    for _ in range(5):
        next(drawn)
    for _ in range(3):  # drawn ahead by DataLoader prefetch, never trained on
        next(drawn)
    saved = io.BytesIO()
    torch.save({"sampler": sampler_state(interrupted, epoch=1, consumed=5)}, saved)
    saved.seek(0)
    state = torch.load(saved, weights_only=True)["sampler"]  # plain types only
    resumed = make()
    restore_sampler(resumed, state)
    resumed.set_epoch(1)  # what the engine does at the start of the pass: keeps the position
    assert [ids(b) for b in resumed] == expected[5:]


@pytest.mark.parametrize(("saved", "given", "refusal"), [
    ({"world_size": 2}, {}, r"saved with processes \(world size\) 2, not 1"),
    ({"seed": 1}, {}, r"saved with \[train\] seed 1, not 0"),
    ({"batch_size": 3}, {}, r"saved with \[data\] batch_size 3, not 0"),
    ({}, {"max_batch_seconds": 6.0}, r"saved with \[data\] max_batch_seconds 5, not 6"),
])
def test_a_data_position_saved_with_other_sampling_settings_is_refused(saved: dict, given: dict, refusal: str,
                                                                        tmp_path: Path) -> None:
    cuts = fake_cuts([1.0, 2.0, 3.0, 4.0], tmp_path)
    state = sampler_state(train_sampler(cuts, **{"max_batch_seconds": 5.0, **saved}), epoch=0, consumed=1)
    with pytest.raises(ValueError, match=refusal):
        restore_sampler(train_sampler(cuts, **{"max_batch_seconds": 5.0, **given}), state)


# ---------------------------------------------------------------- streams


class Source:
    """The fields of macasr.data.manifest.DataSource that the stream reads."""

    def __init__(self, weight: float = 1.0, min_duration: float = 0.0, max_duration: float = 0.0) -> None:
        self.weight, self.text, self.drop_annotations = weight, "keep", False
        self.min_duration, self.max_duration = min_duration, max_duration


def test_duration_limits_of_the_source_and_the_global_ones_both_apply(tmp_path: Path) -> None:
    cuts = fake_cuts([0.5, 1.0, 2.0, 5.0, 9.0], tmp_path)
    kept = lambda **limits: [c.duration for c in source_stream(cuts, Source(**limits.pop("source", {})), **limits)]  # noqa: E731
    assert kept() == [0.5, 1.0, 2.0, 5.0, 9.0]
    assert kept(source={"min_duration": 1.0, "max_duration": 6.0}) == [1.0, 2.0, 5.0]
    assert kept(source={"max_duration": 6.0}, max_duration=3.0) == [0.5, 1.0, 2.0]  # the narrower wins
    assert kept(source={"min_duration": 1.0}, min_duration=2.0) == [2.0, 5.0, 9.0]
    assert DurationRange(0.0, 0.0)(cuts[4])


def test_a_target_longer_than_the_decoder_may_emit_is_dropped_and_reported(tmp_path: Path) -> None:
    audio = wav(tmp_path, "a.wav", noise(2.0))
    cuts = CutSet.from_cuts([cut(audio, "short", text="a b c"), cut(audio, "long", text=" ".join("w" * 30)),
                             cut(audio, "edge", text=" ".join("w" * 26))])
    dropped = []
    options = DecodingOptions(max_tokens_per_second=10.0, max_tokens_base=6)
    limit = TokenLimit(lambda text: len(text.split()), options, on_drop=lambda c, n, cap: dropped.append((c.id, n, cap)))
    assert [c.id for c in cuts.filter(limit)] == ["short", "edge"]  # 2 s * 10 + 6 = 26 tokens allowed
    assert dropped == [("long", 30, 26)]


def test_mixing_is_endless_seeded_and_follows_the_weights(tmp_path: Path) -> None:
    audio = wav(tmp_path, "a.wav", noise(1.0))
    a = CutSet.from_cuts(cut(audio, f"a{i}") for i in range(3))
    b = CutSet.from_cuts(cut(audio, f"b{i}") for i in range(50))
    mixed = mix_streams([a, b], [3.0, 1.0], seed=5)
    first = [c.id for _, c in zip(range(2000), mixed)]
    assert first == [c.id for _, c in zip(range(2000), mix_streams([a, b], [3.0, 1.0], seed=5))]
    counts = Counter(i[0] for i in first)
    assert counts["a"] + counts["b"] == 2000 and 0.70 < counts["a"] / 2000 < 0.80  # 3:1 by cut count
    assert mix_streams([a], [1.0], seed=5) is a  # one source: its epochs, not a mixture
    passes = [c.custom["pass"] for _, c in zip(range(100), mixed) if c.id == "a0"]
    assert passes[:3] == [0, 1, 2]  # ids kept, each pass numbered (augment draws anew per pass)


def test_augment_draws_anew_for_each_pass_of_an_endless_stream(tmp_path: Path) -> None:
    seen = []
    dataset = CutDataset(featurize, augment=lambda c, epoch: seen.append(epoch) or c)
    dataset[CutSet.from_cuts([cut(wav(tmp_path, "a.wav", noise(1.0)), **{"pass": 5})]), 2]
    assert seen == [7]


def test_eval_batches_put_each_result_back_at_its_position(tmp_path: Path) -> None:
    cuts = list(indexed(fake_cuts([2.0, 5.0, 1.0, 4.0, 3.0], tmp_path)))
    for size in (1, 2, 5):
        batches = list(eval_sampler(cuts, size))
        assert [c.custom["index"] for b in batches for c in b] == [1, 3, 4, 0, 2]  # longest first
        assert all(len(b) <= size for b in batches)


class EpochVolume:
    """A picklable augment (it runs in workers): amplitude x (epoch + 1)."""

    def __call__(self, c: MonoCut, epoch: int) -> MonoCut:
        return c.perturb_volume(factor=float(epoch + 1))


def test_persistent_workers_augment_each_epoch_anew(tmp_path: Path) -> None:
    cuts = CutSet.from_cuts([cut(wav(tmp_path, "a.wav", noise(1.0)))])
    sampler = train_sampler(cuts, max_batch_seconds=5.0)
    loader = build_loader(CutDataset(featurize, augment=EpochVolume()), WithEpoch(sampler), num_workers=1)
    features = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        features += [b.features for b in loader]
    assert torch.allclose(features[1], features[0] + 2 * np.log10(2) / 4, atol=1e-3)  # x2 amplitude in epoch 1
