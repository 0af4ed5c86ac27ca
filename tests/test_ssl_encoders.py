"""HuBERT, WavLM and wav2vec2: frame rate from the config, batch independence, a SpeechLLM end to end."""

from __future__ import annotations

import dataclasses
import math
import pickle

import numpy as np
import pytest
import torch

from conftest import noise
from macasr import config as config_module, testing
from macasr.data.collate import Example, collate
from macasr.errors import MacasrError
from macasr.model.build import build_model
from macasr.model.encoders import (
    ENCODERS, HubertEncoderConfig, Wav2Vec2EncoderConfig, WavLMEncoderConfig, receptive_field,
)
from macasr.model.llm import TargetTokenizer
from macasr.model.lora import LoraConfig, lora_layers
from macasr.train import checkpoint

FAMILIES = {"hubert": HubertEncoderConfig, "wavlm": WavLMEncoderConfig, "wav2vec2": Wav2Vec2EncoderConfig}
NORMS = ["layer", "group"]  # large-model and base-model convolution stacks
SECONDS = [0.31, 0.5, 0.002, 0.2]  # 0.002 s is shorter than the receptive field: still one frame
TEXTS = ["the cat sat on the mat", "hello world", "seven green apples", "please call john at nine"]


@pytest.fixture(scope="module")
def ssl_models(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("ssl")
    return {(f, n): testing.save_tiny_ssl_encoder(root / f"{f}-{n}", f, feat_extract_norm=n) for f in FAMILIES for n in NORMS}


def build(family: str, path, **changes):
    return ENCODERS.build(FAMILIES[family](path=str(path), **changes)).eval()


def hf_model(path):
    from transformers import AutoModel

    return AutoModel.from_pretrained(path).eval()


def make_batch(featurizer, seconds=SECONDS, tokenize=None):
    examples = [
        Example(i, f"u{i}", TEXTS[i], s, featurizer(noise(s, seed=i)), tokenize(TEXTS[i]) if tokenize else [])
        for i, s in enumerate(seconds)
    ]
    return collate(examples)


@pytest.mark.parametrize("stride", [(5, 4, 4), (5, 2, 2)])
@pytest.mark.parametrize("family", FAMILIES)
def test_frame_rate_and_lengths_come_from_the_config(family, stride, tmp_path) -> None:
    from transformers import AutoConfig

    path = testing.save_tiny_ssl_encoder(tmp_path / family, family, conv_stride=stride)
    encoder = build(family, path)
    config = AutoConfig.from_pretrained(path)
    hop = math.prod(config.conv_stride)
    assert encoder.frame_rate == 16_000 / hop
    for i, seconds in enumerate(SECONDS):
        features = encoder.featurizer(noise(seconds, seed=i))
        samples = torch.tensor([features.shape[-1]])
        frames, lengths = encoder(features[None], samples)
        expected = encoder.model._get_feat_extract_output_lengths(samples)  # transformers' own arithmetic
        assert frames.shape[1] == lengths.item() == encoder.output_lengths(samples).item() == expected.item() >= 1
        # Frames cover the clip at frame_rate, less the receptive field at the end.
        assert abs(lengths.item() - samples.item() / 16_000 * encoder.frame_rate) <= receptive_field(encoder.kernels, encoder.strides) / hop + 1


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("family", FAMILIES)
def test_batched_frames_equal_one_by_one_and_transformers(family, norm, ssl_models) -> None:
    path = ssl_models[family, norm]
    encoder, reference = build(family, path), hf_model(path)
    batch = make_batch(encoder.featurizer)
    frames, lengths = encoder(batch.features, batch.feature_lengths)
    assert frames.shape[:2] == (len(SECONDS), int(lengths.max())) and frames.shape[2] == encoder.output_dim
    for i, n in enumerate(batch.feature_lengths.tolist()):
        alone, alone_lengths = encoder(batch.features[i : i + 1, :, :n], batch.feature_lengths[i : i + 1])
        assert alone_lengths.item() == lengths[i].item()
        torch.testing.assert_close(frames[i, : lengths[i]], alone[0], atol=1e-5, rtol=1e-5)
        assert not frames[i, lengths[i] :].any()
        torch.testing.assert_close(alone, reference(batch.features[i : i + 1, 0, :n]).last_hidden_state, atol=1e-5, rtol=1e-5)
    if norm == "group":  # what encoding clip by clip avoids: padding shifts transformers' batched frames
        naive = reference(batch.features[:, 0]).last_hidden_state
        n = lengths[2].item()
        assert not torch.allclose(naive[2, :n], frames[2, :n], atol=1e-3)


@pytest.mark.parametrize("do_normalize", [True, False])
def test_featurizer_matches_transformers_feature_extractor(do_normalize, tmp_path) -> None:
    from transformers import AutoFeatureExtractor

    path = testing.save_tiny_ssl_encoder(tmp_path / "w", "wav2vec2", do_normalize=do_normalize)
    encoder = build("wav2vec2", path)
    wave = noise(0.3) + np.float32(0.05)  # an offset, so normalising shows
    theirs = AutoFeatureExtractor.from_pretrained(path)(wave, sampling_rate=16_000, return_tensors="np").input_values[0]
    ours = encoder.featurizer(wave)
    assert ours.shape == (1, len(wave))
    assert torch.equal(pickle.loads(pickle.dumps(encoder.featurizer))(wave), ours)  # DataLoader workers get a copy
    np.testing.assert_allclose(ours[0].numpy(), theirs, atol=1e-5)
    assert abs(float(ours.mean())) < 1e-4 if do_normalize else abs(float(ours.mean()) - 0.05) < 0.01


@pytest.mark.parametrize(("norm", "layer"), [("group", 1), ("layer", 1), ("layer", 2)])  # pre-norm 2: not the final norm
@pytest.mark.parametrize("family", FAMILIES)
def test_layer_selects_that_hidden_state(family, norm, layer, ssl_models) -> None:
    path = ssl_models[family, norm]
    encoder = build(family, path, layer=layer)
    assert len(encoder.model.encoder.layers) == layer
    batch = make_batch(encoder.featurizer, [0.3])
    frames, _ = encoder(batch.features, batch.feature_lengths)
    theirs = hf_model(path)(batch.features[:, 0], output_hidden_states=True).hidden_states[layer]
    torch.testing.assert_close(frames, theirs, atol=1e-5, rtol=1e-5)


def test_wrong_family_missing_layer_and_inert_lora_are_refused(ssl_models) -> None:
    path = ssl_models["wav2vec2", "layer"]
    with pytest.raises(MacasrError, match='wav2vec2 checkpoint, not hubert; set name = "wav2vec2"'):
        build("hubert", path)
    with pytest.raises(MacasrError, match="has 2 layers, got layer = 3"):
        build("wav2vec2", path, layer=3)
    assert any("layer: must be 0" in p for p in Wav2Vec2EncoderConfig(layer=-1).validate())
    attention = LoraConfig(enabled=True, target_modules=["q_proj", "v_proj"])
    with pytest.raises(MacasrError, match=r"wavlm never calls q_proj, v_proj"):
        build("wavlm", ssl_models["wavlm", "layer"], lora=attention)


@pytest.mark.parametrize(("family", "norm"), [("hubert", "layer"), ("wavlm", "group"), ("wav2vec2", "group")])
def test_speech_llm_trains_and_generates(family, norm, tiny_config, ssl_models) -> None:
    cfg = config_module.replace(tiny_config, **{"model.encoder": FAMILIES[family](path=str(ssl_models[family, norm]))})
    model = build_model(cfg).train()
    batch = make_batch(model.encoder.featurizer, tokenize=TargetTokenizer(model.tokenizer, model.prompt.end_id))
    loss = model(batch)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.connector.parameters())
    assert all(not p.requires_grad for p in model.encoder.parameters())
    hyps = model.eval().generate(batch)
    assert len(hyps) == len(SECONDS) and all(isinstance(h, str) for h in hyps)


@pytest.mark.parametrize("family", FAMILIES)
def test_encoder_lora_trains_and_reloads_with_a_layer(family, tiny_config, ssl_models, tmp_path) -> None:
    """LoRA targets exist in these models, adapters learn (time masking on) and a checkpoint restores them."""
    enc_cfg = FAMILIES[family](path=str(ssl_models[family, "group"]), layer=1)
    enc_cfg = dataclasses.replace(enc_cfg, lora=dataclasses.replace(enc_cfg.lora, enabled=True, r=4))
    cfg = config_module.replace(tiny_config, **{"model.encoder": enc_cfg})
    model = build_model(cfg).train()
    assert model.encoder.training and lora_layers(model.encoder.model)
    batch = make_batch(model.encoder.featurizer, tokenize=TargetTokenizer(model.tokenizer, model.prompt.end_id))
    model(batch).backward()
    adapters = [p for n, p in model.encoder.named_parameters() if "lora_B" in n]
    assert adapters and all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapters)
    testing.perturb_trainable(model)
    model.eval()
    path = checkpoint.save_checkpoint(tmp_path / "best.pt", checkpoint.model_payload(model, cfg, step=1))
    restored = checkpoint.restore_model(path, "cpu").model
    frames, _ = model.encoder(batch.features, batch.feature_lengths)
    torch.testing.assert_close(restored.encoder(batch.features, batch.feature_lengths)[0], frames)
    assert len(restored.encoder.model.encoder.layers) == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_config_round_trips_through_toml(family, tiny_config) -> None:
    cfg = config_module.replace(tiny_config, **{"model.encoder": FAMILIES[family](path="some/folder", layer=3)})
    text = config_module.dumps(cfg)
    assert f'name = "{family}"' in text and "layer = 3" in text
    back = config_module.loads(text)
    assert back == cfg and type(back.model.encoder) is FAMILIES[family]
