"""[model.encoder] window: "own" (each clip at its length) and "full" (Whisper's padded 30 s window)."""

from __future__ import annotations

import pytest
import torch

from conftest import noise
from macasr.model.encoders import WhisperEncoder, WhisperEncoderConfig, silence_level


@pytest.fixture(scope="module")
def encoders(tiny_models) -> dict[str, WhisperEncoder]:
    whisper, _ = tiny_models
    return {w: WhisperEncoder(WhisperEncoderConfig(path=str(whisper), window=w)).eval() for w in ("own", "full")}


def test_silence_level_is_what_the_feature_extractor_pads_with(tiny_models, encoders) -> None:
    from transformers import WhisperFeatureExtractor

    whisper, _ = tiny_models
    wave = noise(2.0)
    ours = encoders["full"].featurizer(wave)  # (80, 200)
    padded = WhisperFeatureExtractor.from_pretrained(whisper)(wave, sampling_rate=16_000, padding="max_length", return_tensors="pt").input_features[0]
    tail = padded[:, ours.shape[-1] + 2 :]  # past the clip's last STFT frames
    torch.testing.assert_close(tail, torch.full_like(tail, float(silence_level(ours))), atol=1e-5, rtol=0)


def test_quiet_clip_silence_is_the_log_floor() -> None:
    features = torch.full((80, 10), -1.0)  # max log10 power -8: silence stays at log10(1e-10) = -10
    assert float(silence_level(features)) == -1.5


def test_full_window_equals_stock_encoder_on_padded_features_truncated(tiny_models, encoders) -> None:
    from transformers import WhisperModel

    whisper, _ = tiny_models
    reference = WhisperModel.from_pretrained(whisper).encoder.eval()
    features = encoders["full"].featurizer(noise(2.0))  # (80, 200)
    padded = torch.nn.functional.pad(features, (0, 3000 - 200), value=float(silence_level(features)))
    expected = reference(padded[None]).last_hidden_state[:, :100]
    frames, lengths = encoders["full"](features[None], torch.tensor([200]))
    assert lengths.tolist() == [100]
    torch.testing.assert_close(frames, expected, atol=1e-5, rtol=1e-5)
    own, _ = encoders["own"](features[None], torch.tensor([200]))
    assert not torch.allclose(own, frames, atol=1e-3)  # the policies differ: the choice matters


def test_full_window_encodes_a_long_clip_window_by_window(tiny_models, encoders) -> None:
    from transformers import WhisperModel

    whisper, _ = tiny_models
    reference = WhisperModel.from_pretrained(whisper).encoder.eval()
    features = encoders["full"].featurizer(noise(33.0, seed=3))  # (80, 3300): a window and 300 frames
    pad = float(silence_level(features))
    windows = [features[:, :3000], torch.nn.functional.pad(features[:, 3000:], (0, 2700), value=pad)]
    expected = torch.cat([reference(w[None]).last_hidden_state[0] for w in windows])[: 1500 + 150]
    frames, lengths = encoders["full"](features[None], torch.tensor([3300]))
    assert lengths.tolist() == [1650] and frames.shape[1] == 1650
    torch.testing.assert_close(frames[0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", ["own", "full"])
def test_batch_composition_changes_nothing(encoders, window) -> None:
    encoder = encoders[window]
    clips = [encoder.featurizer(noise(s, seed=i)) for i, s in enumerate((1.5, 0.4, 3.1))]
    lengths = torch.tensor([c.shape[-1] for c in clips])
    batch = torch.nn.utils.rnn.pad_sequence([c.T for c in clips], batch_first=True).transpose(1, 2)
    together, out_lengths = encoder(batch, lengths)
    for i, clip in enumerate(clips):
        alone, alone_lengths = encoder(clip[None], lengths[i : i + 1])
        n = int(alone_lengths[0])
        assert int(out_lengths[i]) == n
        torch.testing.assert_close(together[i, :n], alone[0], atol=1e-5, rtol=1e-5)
        assert not together[i, n:].any()  # zero beyond the clip's own frames
