"""The Whisper encoder takes its log-mel settings from the checkpoint and matches transformers."""

from __future__ import annotations

import numpy as np
import torch

from conftest import noise
from macasr import testing
from macasr.model.encoders import WhisperEncoder, WhisperEncoderConfig


def test_features_match_transformers_feature_extractor(tiny_models) -> None:
    from transformers import WhisperFeatureExtractor

    whisper, _ = tiny_models
    encoder = WhisperEncoder(WhisperEncoderConfig(path=str(whisper)))
    wave = noise(2.0)
    ours = encoder.featurizer(wave)
    theirs = WhisperFeatureExtractor.from_pretrained(whisper)(wave, sampling_rate=16_000, padding="longest", return_tensors="np").input_features[0]
    assert ours.shape == (80, 200) == theirs.shape
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-4)


def test_mel_bins_come_from_the_checkpoint(tmp_path) -> None:
    path = testing.save_tiny_whisper(tmp_path / "w128", num_mel_bins=128)
    encoder = WhisperEncoder(WhisperEncoderConfig(path=str(path)))
    features = encoder.featurizer(noise(1.0))
    assert features.shape[0] == 128
    frames, lengths = encoder(features[None], torch.tensor([features.shape[-1]]))
    assert frames.shape == (1, 50, encoder.output_dim) and encoder.frame_rate == 50


def test_encoder_matches_transformers_on_a_full_window(tiny_models) -> None:
    from transformers import WhisperModel

    whisper, _ = tiny_models
    encoder = WhisperEncoder(WhisperEncoderConfig(path=str(whisper))).eval()
    reference = WhisperModel.from_pretrained(whisper).encoder.eval()
    features = torch.randn(1, 80, 3000)
    ours, _ = encoder(features, torch.tensor([3000]))
    torch.testing.assert_close(ours, reference(features).last_hidden_state, atol=1e-4, rtol=1e-4)
