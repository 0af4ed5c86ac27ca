"""`macasr plan` counts the encoder under both window policies and totals the configured one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from macasr import config as config_module
from macasr.cli import app
from macasr.plan import build_meta_model, build_plan, encoder_flops

runner = CliRunner()
MAIN = "whisper-large-v3_qwen3-1.7b"


def test_full_window_costs_a_whole_window_per_started_window() -> None:
    meta = build_meta_model(config_module.load_preset(MAIN))
    window = encoder_flops(meta.encoder, meta.encoder_config, 30.0)
    assert encoder_flops(meta.encoder, meta.encoder_config, 2.0, "full") == window
    assert encoder_flops(meta.encoder, meta.encoder_config, 31.0, "full") == 2 * window
    assert encoder_flops(meta.encoder, meta.encoder_config, 2.0, "own") < window / 15  # 2 s of 30: cheaper still (attention)


def test_plan_totals_the_configured_window() -> None:
    own_cfg = config_module.replace(config_module.load_preset(MAIN), **{"data.max_batch_seconds": 0.0, "data.batch_size": 8, "data.max_duration": 4.0})
    full_cfg = config_module.replace(own_cfg, **{"model.encoder.window": "full"})
    own, full = build_plan(own_cfg).flops, build_plan(full_cfg).flops
    assert own["encoder_own_per_audio_s"] == full["encoder_own_per_audio_s"] == own["encoder_per_audio_s"]
    assert full["encoder_per_audio_s"] == full["encoder_full_per_audio_s"] > 5 * own["encoder_per_audio_s"]  # 4 s clips
    extra = full["encoder_full_per_audio_s"] - own["encoder_own_per_audio_s"]
    assert full["inference_per_audio_s"] - own["inference_per_audio_s"] == extra  # all else equal


def test_plan_table_shows_both_policies(tmp_path: Path) -> None:
    cfg = config_module.replace(config_module.load_preset(MAIN), **{"model.encoder.window": "full"})
    path = config_module.dump(cfg, tmp_path / "full.toml")
    tables = runner.invoke(app, ["plan", str(path)])
    assert tables.exit_code == 0, tables.output
    assert "window = own" in tables.stdout and "window = full (configured)" in tables.stdout
    plan = json.loads(runner.invoke(app, ["plan", str(path), "--json"]).stdout)
    assert plan["assumptions"]["encoder_window"] == "full"


def test_with_a_feature_cache_a_training_step_runs_no_encoder() -> None:
    live_cfg = config_module.load_preset(MAIN)
    cached_cfg = config_module.replace(live_cfg, **{"data.cache": "cache/whisper"})
    live, cached = build_plan(live_cfg), build_plan(cached_cfg)
    assert live.flops["train_per_audio_s"] - cached.flops["train_per_audio_s"] == pytest.approx(live.flops["encoder_per_audio_s"])
    assert cached.flops["inference_per_audio_s"] == live.flops["inference_per_audio_s"]  # decoding still encodes
    assert cached.assumptions["feature_cache"] and not live.assumptions["feature_cache"]
