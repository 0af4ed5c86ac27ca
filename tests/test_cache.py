"""The frozen-encoder feature cache: frames stored with lhotse's array storage, a key checked on
use, shards written atomically and resumed, and training from cached frames equal to live."""

from __future__ import annotations

import dataclasses
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import SENTENCES, noise
from macasr import config as config_module
from macasr.data.cache import CacheKeyError, CutEncoder, FrameCache, build_cache, cache_key
from macasr.errors import DataError
from macasr.model.llm import TargetTokenizer

DURATIONS = [1.2, 0.6, 2.3, 0.9, 1.7]


def write_cuts(folder: Path, durations: list[float] = DURATIONS, name: str = "cuts.jsonl.gz") -> Path:
    """A lhotse CutSet manifest of WAV clips (one supervision each), as `open_cuts` yields them."""
    from lhotse import CutSet, Recording, SupervisionSegment

    folder.mkdir(parents=True, exist_ok=True)
    cuts = []
    for i, seconds in enumerate(durations):
        wav = folder / f"clip{i}.wav"
        sf.write(wav, noise(seconds, seed=i), 16_000)
        cut = Recording.from_file(wav, recording_id=f"rec/{i}").to_cut()  # a slash: ids need not be file names
        cut.supervisions = [SupervisionSegment(f"sup{i}", cut.recording_id, 0.0, cut.duration, text=SENTENCES[i % len(SENTENCES)])]
        cuts.append(cut)
    path = folder / name
    CutSet.from_cuts(cuts).to_file(path)
    return path


def open_cuts(path: str):
    from lhotse import CutSet

    return CutSet.from_jsonl_lazy(path)


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    return write_cuts(tmp_path / "corpus")


def build(root: Path, model, tiny_config, manifest: Path, **kwargs):
    key = cache_key(tiny_config, model.encoder)
    encode = kwargs.pop("encode", None) or CutEncoder(model.encoder, batch_size=2)
    return key, build_cache(root, key, {"train": [str(manifest)]}, open_cuts, encode, shard_size=2, **kwargs)


def live_features(encoder, cut) -> torch.Tensor:
    """(C, L) log-mel as the training dataset makes it."""
    from macasr.data.loader import CutDataset

    return CutDataset(encoder.featurizer).example(cut).features


def live_frames(encoder, cut) -> torch.Tensor:
    features = live_features(encoder, cut)
    frames, _ = encoder(features[None], torch.tensor([features.shape[-1]]))
    return frames[0]


def test_cached_frames_are_the_live_frames_in_fp16(tmp_path, model, tiny_config, manifest) -> None:
    key, reports = build(tmp_path / "cache", model, tiny_config, manifest)
    assert reports["train"].cuts == reports["train"].encoded == 5 and reports["train"].shards_done == 3
    frames = FrameCache(tmp_path / "cache", key)
    assert len(frames) == 5
    for cut in open_cuts(str(manifest)):
        cached = frames(cut)
        live = live_frames(model.encoder, cut)
        assert cached.dtype == torch.float32 and cached.shape == live.shape == (round(cut.duration * 50), 32)
        torch.testing.assert_close(cached, live.half().float(), atol=2e-3, rtol=1e-3)  # fp16 rounding of batched vs lone float32


def test_bf16_storage_keeps_the_live_frames_in_bf16_and_is_part_of_the_key(tmp_path, model, tiny_config, manifest) -> None:
    bf16 = config_module.replace(tiny_config, **{"data.cache_dtype": "bf16"})
    key = cache_key(bf16, model.encoder)
    assert key["dtype"] == "bfloat16" and cache_key(tiny_config, model.encoder)["dtype"] == "float16"
    build_cache(tmp_path / "cache", key, {"train": [str(manifest)]}, open_cuts,
                CutEncoder(model.encoder, batch_size=2, dtype="bfloat16"), shard_size=2)
    frames = FrameCache(tmp_path / "cache", key)
    for cut in open_cuts(str(manifest)):
        live = live_frames(model.encoder, cut)
        cached = frames(cut)
        assert cached.dtype == torch.float32 and cached.shape == live.shape
        torch.testing.assert_close(cached, live.bfloat16().float(), atol=2e-2, rtol=1e-2)  # bf16: 8 mantissa bits
        assert torch.equal(cached, cached.bfloat16().float())  # exactly bf16 values, not fp16 ones
    with pytest.raises(CacheKeyError, match=r"dtype: cache has 'bfloat16', config gives 'float16'"):
        FrameCache(tmp_path / "cache", cache_key(tiny_config, model.encoder))


def test_frames_beyond_fp16_are_refused_with_the_bf16_hint_and_kept_by_bf16(tmp_path, model, tiny_config, manifest) -> None:
    class Loud(torch.nn.Module):  # an encoder whose frames leave fp16's range
        def __init__(self, encoder):
            super().__init__()
            self.encoder, self.featurizer = encoder, encoder.featurizer

        def forward(self, features, lengths):
            frames, frame_lengths = self.encoder(features, lengths)
            return frames * 1e6, frame_lengths

    loud = Loud(model.encoder)
    key = cache_key(tiny_config, model.encoder)
    with pytest.raises(DataError, match=r"overflow fp16.*cache_dtype = \"bf16\""):
        build_cache(tmp_path / "fp16", key, {"train": [str(manifest)]}, open_cuts, CutEncoder(loud), shard_size=2)
    bf16 = {**key, "dtype": "bfloat16"}
    build_cache(tmp_path / "bf16", bf16, {"train": [str(manifest)]}, open_cuts, CutEncoder(loud, dtype="bfloat16"), shard_size=2)
    cut = next(iter(open_cuts(str(manifest))))
    assert FrameCache(tmp_path / "bf16", bf16)(cut).abs().max() > 65504


def test_cached_cuts_are_plain_lhotse_and_shar_compatible(tmp_path, model, tiny_config, manifest) -> None:
    from lhotse import CutSet

    key, _ = build(tmp_path / "cache", model, tiny_config, manifest)
    cached = CutSet.from_jsonl_lazy(tmp_path / "cache" / "train" / "cuts.000000.jsonl.gz")
    cut = next(iter(cached))
    assert cut.frames.array.storage_type == "numpy_files" and cut.load_frames().dtype == np.float16
    (tmp_path / "shar").mkdir()
    cached.to_shar(tmp_path / "shar", fields={"frames": "numpy"}, shard_size=10)
    from_shar = list(CutSet.from_shar(in_dir=tmp_path / "shar"))
    assert [c.id for c in from_shar] == [c.id for c in cached]
    for a, b in zip(from_shar, cached):
        np.testing.assert_array_equal(a.load_frames(), b.load_frames())


def test_training_step_from_cached_frames_gives_the_live_loss(tmp_path, model, tiny_config, manifest) -> None:
    from lhotse import CutSet

    from macasr.data.loader import CutDataset

    key, _ = build(tmp_path / "cache", model, tiny_config, manifest)
    tokenize = TargetTokenizer(model.tokenizer, model.prompt.end_id)
    live_data = CutDataset(model.encoder.featurizer, tokenize)
    cached_data = CutDataset(model.encoder.featurizer, tokenize, frames_from=FrameCache(tmp_path / "cache", key))
    cuts = CutSet.from_cuts(list(open_cuts(str(manifest)))[:3])
    live, cached = live_data[cuts], cached_data[cuts]
    assert not live.encoded and cached.encoded
    assert cached.features.shape[1] == model.encoder.output_dim and cached.feature_lengths.tolist() == [60, 30, 115]
    assert cached.ids == live.ids and torch.equal(cached.targets, live.targets)
    loss = model(cached)
    torch.testing.assert_close(loss, model(live), atol=1e-3, rtol=1e-3)  # fp16 storage of the frames
    loss.backward()
    assert all(p.grad is not None for p in model.connector.parameters())  # the connector trains from cached frames
    # The encoder is skipped: a broken encoder does not change the cached loss.
    model.encoder.forward = None
    assert torch.equal(model(cached_data[cuts]), loss.detach())


def test_frame_cache_pickles_and_refuses_unknown_or_changed_cuts(tmp_path, model, tiny_config, manifest) -> None:
    key, _ = build(tmp_path / "cache", model, tiny_config, manifest)
    frames = pickle.loads(pickle.dumps(FrameCache(tmp_path / "cache", key)))
    cut = next(iter(open_cuts(str(manifest))))
    assert frames(cut).shape[0] == 60
    assert torch.equal(frames(dataclasses.replace(cut, id="other", custom={"origin": "x.jsonl:3"})), frames(cut))  # same audio
    with pytest.raises(DataError, match=r"rec/0: the feature cache .* has no frames for its audio \(0.6 s from 0 s of recording rec/0\)"):
        frames(dataclasses.replace(cut, duration=0.6))
    with pytest.raises(DataError, match="no frames for its audio"):
        frames(dataclasses.replace(cut, start=0.1, duration=1.0))


def test_same_cut_ids_in_two_manifests_keep_their_own_frames(tmp_path, model, tiny_config) -> None:
    a, b = write_cuts(tmp_path / "a", [1.0, 0.5]), write_cuts(tmp_path / "b", [0.8])  # ids rec/0, rec/1 and rec/0
    key = cache_key(tiny_config, model.encoder)
    build_cache(tmp_path / "cache", key, {"a": [str(a)], "b": [str(b)]}, open_cuts, CutEncoder(model.encoder))
    frames = FrameCache(tmp_path / "cache", key)
    assert len(frames) == 3
    for manifest in (a, b):
        for cut in open_cuts(str(manifest)):
            torch.testing.assert_close(frames(cut), live_frames(model.encoder, cut), atol=2e-3, rtol=1e-3)


def test_stale_key_is_refused_naming_the_field(tmp_path, model, tiny_config, tiny_models, manifest) -> None:
    from macasr.model.encoders import WhisperEncoder

    root = tmp_path / "cache"
    key, _ = build(root, model, tiny_config, manifest)
    full_cfg = dataclasses.replace(tiny_config, model=dataclasses.replace(
        tiny_config.model, encoder=dataclasses.replace(tiny_config.model.encoder, window="full")))
    full = WhisperEncoder(full_cfg.model.encoder)
    full_key = cache_key(full_cfg, full)
    with pytest.raises(CacheKeyError, match=r"window: cache has 'own', config gives 'full'") as e:
        FrameCache(root, full_key)
    assert len(str(e.value).splitlines()) == 1 and "--rebuild" in str(e.value)
    other = WhisperEncoder(dataclasses.replace(tiny_config.model.encoder, path=str(tiny_models[0])))
    assert cache_key(tiny_config, other) == key  # the same weights: the same key
    with torch.no_grad():
        other.model.layer_norm.bias.add_(1.0)
    with pytest.raises(CacheKeyError, match="weights: cache has"):
        FrameCache(root, cache_key(tiny_config, other))
    hop = {**key, "features": {**key["features"], "hop_length": 320}}
    with pytest.raises(CacheKeyError, match="features.hop_length: cache has 160, config gives 320"):
        FrameCache(root, hop)
    # Building with the changed key refuses too, unless told to rebuild.
    with pytest.raises(CacheKeyError, match="window"):
        build_cache(root, full_key, {"train": [str(manifest)]}, open_cuts, CutEncoder(full), shard_size=2)
    reports = build_cache(root, full_key, {"train": [str(manifest)]}, open_cuts, CutEncoder(full), shard_size=2, rebuild=True)
    assert reports["train"].encoded == 5
    cut = next(iter(open_cuts(str(manifest))))
    rebuilt = FrameCache(root, full_key)(cut)
    torch.testing.assert_close(rebuilt, live_frames(full, cut), atol=2e-3, rtol=1e-3)  # the frames of the new key


def test_interrupted_build_resumes_and_no_partial_shard_is_readable(tmp_path, model, tiny_config, manifest, monkeypatch) -> None:
    from lhotse import CutSet
    from lhotse.features.io import NumpyFilesWriter

    root = tmp_path / "cache"
    write = NumpyFilesWriter.write
    calls = {"n": 0}

    def dies_on_third_array(self, key, value):
        calls["n"] += 1
        if calls["n"] == 3:  # the first clip of shard 1: shard 0 (2 clips) is complete
            raise KeyboardInterrupt
        return write(self, key, value)

    monkeypatch.setattr(NumpyFilesWriter, "write", dies_on_third_array)
    with pytest.raises(KeyboardInterrupt):
        key, _ = build(root, model, tiny_config, manifest)
    monkeypatch.setattr(NumpyFilesWriter, "write", write)
    key = cache_key(tiny_config, model.encoder)
    src = root / "train"
    assert sorted(p.name for p in src.glob("cuts.*.jsonl.gz")) == ["cuts.000000.jsonl.gz"]
    assert len(CutSet.from_jsonl_lazy(src / "cuts.000000.jsonl.gz")) == 2  # readers see finished shards only
    with pytest.raises(DataError, match="incomplete"):
        FrameCache(root, key)

    encoded = []
    encoder = CutEncoder(model.encoder)

    def counting(cuts):
        encoded.extend(c.id for c in cuts)
        return encoder(cuts)

    _, reports = build(root, model, tiny_config, manifest, encode=counting)
    assert reports["train"].shards_kept == 1 and reports["train"].shards_done == 2
    first_shard = {c.id for c in CutSet.from_jsonl_lazy(src / "cuts.000000.jsonl.gz")}
    assert len(encoded) == 3 and not first_shard & set(encoded)  # finished shard not re-encoded
    assert not list(src.glob("*.partial*"))
    frames = FrameCache(root, key)
    for cut in open_cuts(str(manifest)):
        torch.testing.assert_close(frames(cut), live_frames(model.encoder, cut), atol=2e-3, rtol=1e-3)


def test_bad_clips_are_skipped_and_reported(tmp_path, model, tiny_config, manifest) -> None:
    (tmp_path / "corpus" / "clip1.wav").write_bytes(b"not audio")
    key, reports = build(tmp_path / "cache", model, tiny_config, manifest)
    assert reports["train"].cuts == 4 and len(reports["train"].skipped) == 1
    assert len(reports["train"].skipped) == 1
    assert reports["train"].skipped[0].startswith(f"{tmp_path / 'corpus' / 'clip1.wav'}: cannot decode audio")
    # Training from the cache names the build's reason, not a cache to rebuild (which would skip it again).
    bad = next(c for c in open_cuts(str(manifest)) if c.recording.sources[0].source.endswith("clip1.wav"))
    with pytest.raises(DataError, match=r"^cannot decode audio .*left it out of the feature cache\)$"):
        FrameCache(tmp_path / "cache", key)(bad)
    with pytest.raises(DataError, match="cannot decode audio"):
        build(tmp_path / "cache2", model, tiny_config, manifest, on_bad_clip="error")


def test_a_folder_that_is_no_cache_is_not_written_into(tmp_path, model, tiny_config, manifest) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a feature cache"):
        build(tmp_path / "mine", model, tiny_config, manifest, rebuild=True)
    assert (tmp_path / "mine" / "notes.txt").exists()


def test_shar_input_is_cached_and_found(tmp_path, model, tiny_config, manifest) -> None:
    from lhotse import CutSet

    from macasr.data.manifest import open_cuts as macasr_open_cuts

    shar = tmp_path / "shar"
    shar.mkdir()
    CutSet.from_jsonl_lazy(manifest).to_shar(shar, fields={"recording": "flac"}, shard_size=3)
    key = cache_key(tiny_config, model.encoder)
    build_cache(tmp_path / "cache", key, {"shar": [str(shar)]}, macasr_open_cuts, CutEncoder(model.encoder), shard_size=2)
    manifests = list((tmp_path / "cache" / "shar").glob("cuts.*.jsonl.gz"))
    assert all(b"memory" not in m.read_bytes() for m in manifests)  # no audio bytes in the cache's manifests
    frames = FrameCache(tmp_path / "cache", key)
    for cut in macasr_open_cuts(shar):
        torch.testing.assert_close(frames(cut), live_frames(model.encoder, cut), atol=2e-3, rtol=1e-3)


def test_a_manifest_written_again_with_the_same_cuts_keeps_its_identity(tmp_path) -> None:
    from macasr.data.cache import source_identity

    first = source_identity([str(write_cuts(tmp_path / "a", [1.0]))])
    raw = (tmp_path / "a" / "cuts.jsonl.gz").read_bytes()
    time.sleep(1.1)  # a new gzip timestamp
    again = source_identity([str(write_cuts(tmp_path / "a", [1.0]))])
    assert again == first
    assert (tmp_path / "a" / "cuts.jsonl.gz").read_bytes() != raw  # the gzip bytes did change
    assert source_identity([str(write_cuts(tmp_path / "a", [1.5]))])["contents"] != first["contents"]
