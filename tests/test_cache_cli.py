"""`macasr cache build` from a config, and the config checks a feature cache brings."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from macasr import config as config_module
from macasr.cli import app
from macasr.data.cache import CacheKeyError, FrameCache, cache_key
from macasr.data.manifest import open_cuts
from macasr.model.build import build_model
from test_cache import write_cuts

runner = CliRunner()


@pytest.fixture
def cache_config(tmp_path: Path, tiny_config):
    train = write_cuts(tmp_path / "train", [1.0, 0.5, 1.5], "train.jsonl.gz")
    valid = write_cuts(tmp_path / "valid", [0.7], "valid.jsonl.gz")
    return config_module.replace(tiny_config, **{"data.train": [str(train)], "data.valid": [str(valid)],
                                                 "data.cache": str(tmp_path / "cache")})


def invoke(cfg, path: Path, *args: str):
    return runner.invoke(app, ["cache", "build", str(config_module.dump(cfg, path)), "--device", "cpu", "--shard-size", "2", *args])


def test_cache_build_caches_train_and_valid_and_resumes(tmp_path, cache_config) -> None:
    result = invoke(cache_config, tmp_path / "c.toml")
    assert result.exit_code == 0, result.output
    assert "train" in result.stdout and "valid" in result.stdout
    model = build_model(cache_config)
    frames = FrameCache(cache_config.data.cache, cache_key(cache_config, model.encoder))
    assert len(frames) == 4
    cut = next(iter(open_cuts(cache_config.data.train[0])))
    assert frames(cut).shape == (50, model.encoder.output_dim)
    again = invoke(cache_config, tmp_path / "c.toml")
    assert again.exit_code == 0, again.output
    row = next(line for line in again.stdout.splitlines() if "train" in line)
    assert [cell.strip() for cell in row.split("│")[2:5]] == ["3", "0", "2"]  # cached, encoded now, shards kept


def test_changed_window_is_refused_then_rebuilt(tmp_path, cache_config) -> None:
    assert invoke(cache_config, tmp_path / "c.toml").exit_code == 0
    full = config_module.replace(cache_config, **{"model.encoder.window": "full"})
    refused = invoke(full, tmp_path / "full.toml")
    assert refused.exit_code == 1
    assert len(refused.stderr.splitlines()) == 1
    assert "window: cache has 'own', config gives 'full'" in refused.stderr and "--rebuild" in refused.stderr
    rebuilt = invoke(full, tmp_path / "full.toml", "--rebuild")
    assert rebuilt.exit_code == 0, rebuilt.output
    model = build_model(full)
    assert len(FrameCache(full.data.cache, cache_key(full, model.encoder))) == 4


def test_datasets_option_picks_sources_and_names_unknown_ones(tmp_path, cache_config) -> None:
    result = invoke(cache_config, tmp_path / "c.toml", "--datasets", "valid")
    assert result.exit_code == 0, result.output
    assert [p.name for p in Path(cache_config.data.cache).iterdir() if p.is_dir()] == ["valid"]
    unknown = invoke(cache_config, tmp_path / "c.toml", "--datasets", "nope")
    assert unknown.exit_code == 1 and "'nope' not in [data] train or valid (they hold: train, valid)" in unknown.stderr


def test_cache_build_needs_a_cache_folder(tmp_path, cache_config) -> None:
    result = invoke(config_module.replace(cache_config, **{"data.cache": ""}), tmp_path / "c.toml")
    assert result.exit_code == 1 and "[data] cache: empty" in result.stderr


def test_cache_build_refuses_a_config_that_cannot_use_a_cache(tmp_path, cache_config) -> None:
    result = invoke(config_module.replace(cache_config, **{"data.spec_augment": True}), tmp_path / "c.toml")
    assert result.exit_code == 1 and "[data] cache: spec_augment" in result.stderr
    assert not Path(cache_config.data.cache).exists()


def test_frame_cache_names_a_dataset_left_out_or_built_from_other_manifests(tmp_path, cache_config) -> None:
    from macasr.data.cache import cache_sources
    from macasr.errors import DataError

    assert invoke(cache_config, tmp_path / "c.toml", "--datasets", "train").exit_code == 0
    model = build_model(cache_config)
    key = cache_key(cache_config, model.encoder)
    sources = cache_sources(cache_config, None)
    assert sources == {"train": cache_config.data.train, "valid": cache_config.data.valid}
    with pytest.raises(DataError, match=r"no frames for dataset 'valid'; build them with `macasr cache build CONFIG --datasets valid`"):
        FrameCache(cache_config.data.cache, key, sources)
    assert len(FrameCache(cache_config.data.cache, key, {"train": sources["train"]})) == 3
    moved = write_cuts(tmp_path / "other", [1.0], "train.jsonl.gz")
    with pytest.raises(CacheKeyError, match=r"dataset 'train': it was cached from .* but the config gives"):
        FrameCache(cache_config.data.cache, key, {"train": [str(moved)]})
    write_cuts(tmp_path / "train", [1.0, 0.5], "train.jsonl.gz")  # the same file, edited
    with pytest.raises(CacheKeyError, match=r"dataset 'train': its manifests changed since it was cached; rebuild"):
        FrameCache(cache_config.data.cache, key, sources)
    resumed = invoke(cache_config, tmp_path / "c.toml", "--datasets", "train")
    assert resumed.exit_code == 1 and "its manifests changed" in resumed.stderr
    assert invoke(cache_config, tmp_path / "c.toml", "--datasets", "train", "--rebuild").exit_code == 0
    assert len(FrameCache(cache_config.data.cache, key, {"train": sources["train"]})) == 2


def test_frames_from_config_is_none_without_a_cache_and_checked_with_one(tmp_path, cache_config) -> None:
    from macasr.data.cache import frames_from_config

    model = build_model(cache_config)
    assert frames_from_config(config_module.replace(cache_config, **{"data.cache": ""}), model.encoder) is None
    assert invoke(cache_config, tmp_path / "c.toml").exit_code == 0
    frames = frames_from_config(cache_config, model.encoder)
    assert isinstance(frames, FrameCache) and len(frames) == 4


@pytest.mark.parametrize("frame_mask", [False, True])
def test_training_with_a_cache_reads_no_audio(tmp_path, cache_config, frame_mask: bool) -> None:
    # Frames come from the cache: with the audio files gone, training still takes its steps.
    cfg = config_module.replace(cache_config, **{
        "data.valid": [], "data.frame_mask": frame_mask, "train.max_steps": 2, "train.warmup_steps": 0,
        "train.valid_every": 2, "train.output_dir": str(tmp_path / "runs"), "train.name": "cached",
    })
    assert invoke(cfg, tmp_path / "c.toml").exit_code == 0
    for wav in (Path(cfg.data.train[0]).parent).glob("*.wav"):
        wav.unlink()
    result = runner.invoke(app, ["train", str(config_module.dump(cfg, tmp_path / "t.toml"))])
    assert result.exit_code == 0, result.output
    assert "skipped" not in result.output and not (tmp_path / "runs" / "cached" / "bad_clips.jsonl").exists()
    assert (tmp_path / "runs" / "cached" / "last.pt").is_file()


def test_training_without_a_cache_reads_the_audio(tmp_path, cache_config) -> None:
    # The counterpart: the same run without [data] cache needs the audio, and says so per clip.
    cfg = config_module.replace(cache_config, **{
        "data.valid": [], "data.cache": "", "train.max_steps": 1, "train.warmup_steps": 0,
        "train.output_dir": str(tmp_path / "runs"), "train.name": "live",
    })
    for wav in (Path(cfg.data.train[0]).parent).glob("*.wav"):
        wav.unlink()
    result = runner.invoke(app, ["train", str(config_module.dump(cfg, tmp_path / "t.toml"))])
    assert result.exit_code == 1, result.output
    assert "no such audio file" in result.output and "none of the 3 training clips could be read" in result.output
