"""`macasr plan`: parameters, memory and FLOPs of a config, before anyone rents a GPU.

The encoder, connector and LLM are built on the meta device from their architecture configs
(no weights, nothing downloaded): a local folder's config.json, else the copy shipped in
`macasr.hub_configs` for the hub ids our presets use, else `AutoConfig.from_pretrained` (hub
cache or network). Everything else is arithmetic on those modules and configs.

Symbols: S audio seconds in a micro-batch, B rows (clips) in it, d seconds per clip, f encoder
frame rate (50 Hz for Whisper), k connector downsampling, P prompt tokens, τ transcript tokens
per audio second, n tokens in an LLM row, h LLM width, q = heads·head_dim, kv = kv_heads·head_dim,
I FFN width, V vocabulary, L layers, w sliding window.

Conventions (docs/models.md shows them with numbers):
- FLOPs = 2 × multiply-accumulates of matmuls (Linear, Conv1d) and attention (QKᵀ and AV, every
  query against every visible key, as torch.utils.flop_counter counts SDPA; causal kernels skip
  about half). Norms, activations, softmax, RoPE and embedding lookups are left out. Encoder and
  LLM are counted from their shapes; the connector, whatever its kind, by running it on meta
  under torch's FlopCounterMode. Training a frozen part costs its forward plus one more for the
  input gradients (2×); a trained part adds the weight gradients (3×). With a feature cache
  ([data] cache) a training step runs no encoder.
- Memory: `[train] precision = "auto"` is planned as a CUDA GPU with bf16. Frozen weights are
  held in the compute dtype, trainable ones (LoRA adapters too) in fp32 with fp32 gradients and
  AdamW's two fp32 moments; no separate master copy, as the weights themselves are fp32.
- Activations kept for backward, per micro-batch, in the compute dtype (checked against
  torch's saved tensors in tests/test_plan.py). LLM rows hold n = P + d·f/k + d·τ tokens; per
  token and layer a frozen layer keeps m·h (inputs of its m norms of width h) + q + kv (inputs
  of q/k norms, when present) + 2q + 2kv (SDPA's q, k, v and output) + 3I for a gated MLP
  (I otherwise); a trained layer adds m·h + 2h + q + I (every Linear's input, every norm's
  output); a LoRA adapter adds its input width (twice with dropout: the dropped-out copy and
  its mask) + r. Logits at target positions cost 10 bytes each (fp32 log-probabilities kept
  by cross-entropy, then their gradient and the bf16 logits' gradient). The connector keeps
  its Linears' inputs and outputs per speech token. The encoder
  keeps its layers by the same formula when gradients reach it, else only its output frames
  and one layer's working set (5·D + FFN per frame).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from macasr import hub_configs
from macasr.errors import MacasrError
from macasr.model._hf import loading, locate
from macasr.model.connectors import CONNECTORS
from macasr.model.lora import check_targets

if TYPE_CHECKING:
    from macasr.config import Config
    from macasr.model.lora import LoraConfig

BYTES = {"bf16": 2, "fp32": 4}
FP32 = 4  # bytes: trainable weights, their gradients, each AdamW moment, checkpoints
ADAM_MOMENTS = 2
LOGIT_BYTES = 10  # fp32 log-probabilities kept by cross-entropy, their gradient, the bf16 logits' gradient
WHISPER_WINDOW_S = 30.0  # s: Whisper encodes at most one 30 s window at a time
DEFAULT_TOKENS_PER_SECOND = 4.0  # English read speech: ~2.7 words/s × ~1.4 BPE tokens per word
CHARS_PER_TOKEN = 4  # prompt-length estimate when the tokenizer is not on this machine
CHAT_TEMPLATE_TOKENS = 12  # role markers a chat template adds around the user turn (estimate)


@dataclasses.dataclass(frozen=True)
class MetaModel:
    """The three parts on the meta device, with the configs they were built from."""

    encoder: nn.Module  # transformers' WhisperEncoder: the encoder half only
    connector: nn.Module
    llm: nn.Module
    encoder_config: Any
    llm_config: Any
    frame_rate: float  # f: encoder frames per audio second
    sources: dict[str, str]  # part → where its architecture config came from


@dataclasses.dataclass(frozen=True)
class PartPlan:
    model: str
    params: int  # all parameters, LoRA adapters included (tied weights once)
    trainable: int
    lora: int  # LoRA adapter parameters, r·(in + out) per targeted Linear
    weight_bytes: int
    flops_per_audio_s: float  # inference


@dataclasses.dataclass(frozen=True)
class Plan:
    parts: dict[str, PartPlan]
    memory: dict[str, int]  # bytes
    flops: dict[str, float]
    checkpoint_bytes: int
    assumptions: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        parts = self.parts.values()
        totals = {key: sum(getattr(p, key) for p in parts) for key in ("params", "trainable", "lora", "weight_bytes")}
        return {
            "parts": {name: dataclasses.asdict(p) for name, p in self.parts.items()}, "total": totals,
            "memory_bytes": self.memory, "flops": self.flops, "checkpoint_bytes": self.checkpoint_bytes,
            "assumptions": self.assumptions,
        }


# ----------------------------------------------------------------------------- building on meta


def architecture_config(path: str, key: str, trust_remote_code: bool = False) -> tuple[Any, str]:
    """(transformers config, source) for a folder, a hub id we ship a config for, or any hub id.

    Shipped copies come before the hub, so planning the presets never touches the network.
    """
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    shipped = None if Path(path).is_dir() else hub_configs.load(path)
    if shipped is not None:
        return CONFIG_MAPPING[shipped["model_type"]].from_dict(shipped), "shipped"
    # A folder must hold config.json; a hub id must be cached or the hub must answer (one quick
    # probe instead of huggingface_hub's retries when offline).
    source = locate(key, path, {"config.json": "the model's architecture"})
    with loading(key, path, offline=source.offline):
        config = AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    return config, "folder" if Path(source.path).is_dir() else "hub"


def build_meta_model(cfg: Config) -> MetaModel:
    """Encoder, connector and LLM with their real widths, on the meta device."""
    from transformers import AutoModelForCausalLM
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    enc_cfg, llm_cfg = cfg.model.encoder, cfg.model.llm
    if enc_cfg.name != "whisper":
        raise MacasrError(f"[model.encoder] name: `macasr plan` sizes the whisper encoder only, got {enc_cfg.name!r}")
    enc_config, enc_source = architecture_config(enc_cfg.path, "model.encoder")
    if enc_config.model_type != "whisper":
        raise MacasrError(f"[model.encoder] path: {enc_cfg.path!r} is a {enc_config.model_type!r} model, not whisper")
    llm_config, llm_source = architecture_config(llm_cfg.path, "model.llm", llm_cfg.trust_remote_code)
    with torch.device("meta"):
        encoder = WhisperEncoder(enc_config)
        llm = AutoModelForCausalLM.from_config(llm_config, trust_remote_code=llm_cfg.trust_remote_code)
        width = llm.get_input_embeddings().embedding_dim
        connector = CONNECTORS.build(cfg.model.connector, enc_config.d_model, width)
    frame_rate = enc_config.max_source_positions / WHISPER_WINDOW_S  # 1500 frames per 30 s = 50 Hz
    return MetaModel(encoder, connector, llm, enc_config, llm_config, frame_rate, {"encoder": enc_source, "llm": llm_source})


# ----------------------------------------------------------------------------- parameters


def _shape(layer: nn.Module) -> tuple[int, int]:
    """(in, out) of nn.Linear or GPT-2's Conv1D (whose weight is stored (in, out))."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    return tuple(layer.weight.shape)  # type: ignore[return-value]


def lora_shapes(module: nn.Module, lora: LoraConfig, key: str) -> list[tuple[int, int]]:
    """(in, out) of every layer LoRA wraps, matched like peft; a name that matches no linear
    layer is the same one-line error `build_model` gives."""
    return [_shape(layer) for layer in check_targets(module, list(lora.target_modules), key)] if lora.enabled else []


def count_part(module: nn.Module, train: bool, lora: LoraConfig | None = None, key: str = "") -> tuple[int, int, int]:
    """(total, trainable, lora): with LoRA on, base weights stay frozen and only adapters (A: r × in, B: out × r) train."""
    base = sum(p.numel() for p in module.parameters())
    adapters = sum(lora.r * (n_in + n_out) for n_in, n_out in lora_shapes(module, lora, key)) if lora else 0
    trainable = adapters if lora is not None and lora.enabled else (base if train else 0)
    return base + adapters, trainable, adapters


# ----------------------------------------------------------------------------- FLOPs


def linear_macs(module: nn.Module, skip: nn.Module | None = None) -> int:
    """Multiply-accumulates per row through every Linear (and Conv1D) of `module`."""
    from transformers.pytorch_utils import Conv1D

    return sum(math.prod(_shape(m)) for m in module.modules() if isinstance(m, (nn.Linear, Conv1D)) and m is not skip)


def encoder_flops(encoder: nn.Module, config: Any, seconds: float, window: str = "own") -> float:
    """FLOPs to encode one clip of `seconds`, window by window: at the clip's own length
    (`window` = "own"), or every window padded to the full 30 s ("full")."""
    rate = config.max_source_positions / WHISPER_WINDOW_S
    total, left = 0.0, seconds
    while left > 0:
        own = min(left, WHISPER_WINDOW_S) if window == "own" else WHISPER_WINDOW_S
        frames = math.ceil(own * rate)  # T, after conv2's stride 2
        positions, conv = 2 * frames, 0
        for c in (encoder.conv1, encoder.conv2):
            positions //= c.stride[0]
            conv += positions * c.in_channels * c.out_channels * c.kernel_size[0] // c.groups
        attention = config.encoder_layers * 2 * frames * frames * config.d_model  # QKᵀ and AV
        total += 2 * (conv + frames * linear_macs(encoder) + attention)
        left -= WHISPER_WINDOW_S
    return total


def connector_run(connector: nn.Module, frames: int, width: int) -> tuple[float, int]:
    """(FLOPs, speech embeddings) of the connector on one clip of `frames` encoder frames, counted
    by running it on meta under FlopCounterMode, so any connector kind is counted as it computes."""
    from torch.utils.flop_counter import FlopCounterMode

    connector.train()  # the path training takes (nn.MultiheadAttention has a fused eval path)
    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        connector(torch.zeros(1, frames, width), torch.tensor([frames]))
    tokens = int(connector.output_lengths(torch.tensor([frames]))[0])  # on the CPU: a real number
    return float(counter.get_total_flops()), tokens


def llm_shape(config: Any) -> dict[str, Any]:
    """Widths the FLOP and memory formulas need, from a causal LM's config."""
    heads, h = config.num_attention_heads, config.hidden_size
    head_dim = getattr(config, "head_dim", None) or h // heads
    layers = config.num_hidden_layers
    types = getattr(config, "layer_types", None) or ["full_attention"] * layers
    window = getattr(config, "sliding_window", None)
    ffn = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * h  # GPT-2: n_inner or 4h
    return {
        "h": h, "q": heads * head_dim, "kv": (getattr(config, "num_key_value_heads", None) or heads) * head_dim,
        "head_dim": head_dim, "layers": layers, "I": ffn, "V": config.vocab_size,
        "windows": [window if t == "sliding_attention" and window else None for t in types],
    }


def llm_flops(llm: nn.Module, shape: dict[str, Any], queries: int, context: int, logits: int) -> float:
    """One LLM forward: `queries` new tokens, each seeing `context` keys (capped by sliding
    windows), and `logits` rows through the output layer."""
    head = llm.get_output_embeddings()
    attention = sum(2 * queries * shape["q"] * (min(context, w) if w else context) for w in shape["windows"])
    return 2.0 * (queries * linear_macs(llm, skip=head) + attention + logits * shape["h"] * shape["V"])


# ----------------------------------------------------------------------------- memory


def layer_activation_elements(h: int, q: int, kv: int, ffn: int, norms: int, qk_norm: bool, gated: bool, trained: bool) -> int:
    """Elements one transformer layer keeps for backward, per token (formula in the module docstring)."""
    kept = norms * h + (q + kv if qk_norm else 0) + 2 * q + 2 * kv + (3 if gated else 1) * ffn
    if trained:  # weight gradients also need every Linear's input and every norm's output
        kept += norms * h + 2 * h + q + ffn
    return kept


def _lora_elements(shapes: list[tuple[int, int]], lora: LoraConfig) -> int:
    """Per token: each adapter keeps its input (with dropout, a dropped-out copy and its mask) and its rank-r activation."""
    return sum((2 if lora.dropout > 0 else 1) * n_in + lora.r for n_in, _ in shapes)


def llm_activation_elements(llm: nn.Module, shape: dict[str, Any], trained: bool, lora: LoraConfig) -> int:
    """Activation elements the LLM keeps for backward per token, all layers together."""
    norm_sizes = [m.weight.numel() for m in llm.modules() if "Norm" in type(m).__name__ and getattr(m, "weight", None) is not None]
    norms = max(0, norm_sizes.count(shape["h"]) - 1) // shape["layers"]  # minus the final norm
    qk_norm = shape["head_dim"] != shape["h"] and shape["head_dim"] in norm_sizes
    gated = any(name.endswith("gate_proj") for name, _ in llm.named_modules())
    per_layer = layer_activation_elements(shape["h"], shape["q"], shape["kv"], shape["I"], norms, qk_norm, gated, trained)
    return shape["layers"] * per_layer + _lora_elements(lora_shapes(llm, lora, "model.llm.lora"), lora)


def encoder_activation_elements(encoder: nn.Module, config: Any, trained: bool, lora: LoraConfig) -> int:
    """Per encoder frame, all layers, when gradients reach the encoder (it trains or has adapters)."""
    d = config.d_model
    per_layer = layer_activation_elements(d, d, d, config.encoder_ffn_dim, 2, False, False, trained)
    return config.encoder_layers * per_layer + _lora_elements(lora_shapes(encoder, lora, "model.encoder.lora"), lora)


def _connector_elements(connector: nn.Module) -> int:
    """Per speech embedding: inputs and outputs of the connector's Linears (the stacked frames included)."""
    return sum(m.in_features + m.out_features for m in connector.modules() if isinstance(m, nn.Linear))


def prompt_length(cfg: Config) -> tuple[int, bool]:
    """(prompt tokens, exact?): from the tokenizer when it is on this machine (a folder or the
    hub cache; never downloaded), else estimated from the prompt's characters."""
    from transformers import AutoTokenizer

    from macasr.model.llm import prompt_tokens

    llm_cfg = cfg.model.llm
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            llm_cfg.path, local_files_only=not Path(llm_cfg.path).is_dir(), trust_remote_code=llm_cfg.trust_remote_code
        )
    except (OSError, ValueError):
        chars = len(cfg.prompt.prefix) + len(cfg.prompt.suffix)
        return math.ceil(chars / CHARS_PER_TOKEN) + (CHAT_TEMPLATE_TOKENS if cfg.prompt.style == "chat" else 0), False
    tokens = prompt_tokens(tokenizer, cfg.prompt)  # a bad [prompt] fails here as it would in training
    return len(tokens.prefix) + len(tokens.suffix), True


# ----------------------------------------------------------------------------- the plan


def compute_precision(precision: str) -> str:
    """auto is planned as a CUDA GPU with bf16, where training runs."""
    return "bf16" if precision == "auto" else precision


def build_plan(cfg: Config, batch_seconds: float | None = None, tokens_per_second: float = DEFAULT_TOKENS_PER_SECOND) -> Plan:
    """Parameters, memory (bytes) and FLOPs of `cfg`; the module docstring gives the formulas."""
    meta = build_meta_model(cfg)
    data, model_cfg, ev = cfg.data, cfg.model, cfg.eval
    act = BYTES[compute_precision(cfg.train.precision)]
    rows = data.batch_size  # B
    seconds = batch_seconds or data.max_batch_seconds or rows * (data.max_duration or WHISPER_WINDOW_S)  # S
    clip = seconds / rows  # d: duration bucketing keeps a batch's rows alike
    prompt, prompt_exact = prompt_length(cfg)
    shape = llm_shape(meta.llm_config)
    counts = {
        "encoder": count_part(meta.encoder, model_cfg.encoder.train, model_cfg.encoder.lora, "model.encoder.lora"),
        "connector": count_part(meta.connector, True),
        "llm": count_part(meta.llm, model_cfg.llm.train, model_cfg.llm.lora, "model.llm.lora"),
    }
    frames = math.ceil(clip * meta.frame_rate)
    conn_fwd, speech = connector_run(meta.connector, frames, meta.encoder_config.d_model)
    target = math.ceil(clip * tokens_per_second)
    n_train = prompt + speech + target  # n
    flops = _flops(cfg, meta, shape, clip, prompt, speech, target, conn_fwd, tokens_per_second)
    models = {"encoder": model_cfg.encoder.path, "connector": model_cfg.connector.name, "llm": model_cfg.llm.path}
    per_second = {"encoder": flops["encoder_per_audio_s"], "connector": flops["connector_per_audio_s"],
                  "llm": flops["llm_prefill_per_audio_s"] + flops["llm_decode_per_audio_s"]}
    parts = {
        name: PartPlan(models[name], total, trainable, lora, (total - trainable) * act + trainable * FP32, per_second[name])
        for name, (total, trainable, lora) in counts.items()
    }
    trainable = sum(p.trainable for p in parts.values())
    memory = {
        "weights": sum(p.weight_bytes for p in parts.values()), "gradients": trainable * FP32,
        "optimizer": trainable * FP32 * ADAM_MOMENTS,
        "activations": _activation_bytes(cfg, meta, shape, rows, speech, n_train, target, frames, act),
    }
    memory["train_total"] = sum(memory.values())
    memory["kv_cache"] = _kv_cache_bytes(cfg, meta, shape, prompt, act)
    memory["inference_total"] = memory["weights"] + memory["kv_cache"]
    assumptions = {
        "device": "cuda", "compute_dtype": compute_precision(cfg.train.precision), "precision": cfg.train.precision,
        "batch_seconds": seconds, "batch_rows": rows, "clip_seconds": clip, "encoder_frame_rate_hz": meta.frame_rate,
        "speech_tokens_per_s": speech / clip, "prompt_tokens": prompt, "prompt_tokens_exact": prompt_exact,
        "transcript_tokens_per_s": tokens_per_second, "encoder_window": model_cfg.encoder.window,
        "feature_cache": bool(data.cache), "eval_rows": ev.batch_size * ev.num_beams,
        "config_sources": meta.sources,
    }
    return Plan(parts, memory, flops, trainable * FP32, assumptions)


def _activation_bytes(cfg: Config, meta: MetaModel, shape: dict[str, Any], rows: int, speech: int, n_train: int,
                      target: int, frames: int, act: int) -> int:
    """Activations one training micro-batch keeps for backward (formula in the module docstring)."""
    enc_cfg, llm_cfg, ec = cfg.model.encoder, cfg.model.llm, meta.encoder_config
    llm = n_train * llm_activation_elements(meta.llm, shape, llm_cfg.train, llm_cfg.lora) * act
    logits = (target + 1) * shape["V"] * LOGIT_BYTES
    connector = speech * _connector_elements(meta.connector) * act
    if enc_cfg.train or enc_cfg.lora.enabled:
        per_frame = encoder_activation_elements(meta.encoder, ec, enc_cfg.train, enc_cfg.lora)
    else:  # no graph through a frozen encoder: its output plus one layer's working set
        per_frame = 5 * ec.d_model + ec.encoder_ffn_dim
    if enc_cfg.window == "full":  # every window runs at its full 30 s length
        frames = math.ceil(frames / ec.max_source_positions) * ec.max_source_positions
    return rows * (llm + logits + connector + frames * per_frame * act)


def _flops(cfg: Config, meta: MetaModel, shape: dict[str, Any], clip: float, prompt: int, speech: int, target: int,
           conn_fwd: float, tokens_per_second: float) -> dict[str, float]:
    """Inference and training FLOPs for clips of `clip` seconds (conventions in the module docstring)."""
    enc_cfg, llm_cfg = cfg.model.encoder, cfg.model.llm
    n_train = prompt + speech + target
    by_window = {w: encoder_flops(meta.encoder, meta.encoder_config, clip, w) / clip for w in ("own", "full")}
    enc_fwd = by_window[enc_cfg.window] * clip
    prefill = llm_flops(meta.llm, shape, prompt + speech, prompt + speech, 1)
    decode_token = llm_flops(meta.llm, shape, 1, prompt + speech + target // 2, 1)  # mid-transcript
    llm_fwd = llm_flops(meta.llm, shape, n_train, n_train, target + 1)
    llm_factor = 3 if llm_cfg.train else 2  # LoRA: a frozen base plus tiny adapters
    enc_factor = 3 if enc_cfg.train else 2 if enc_cfg.lora.enabled else 1  # frozen: forward only
    if cfg.data.cache:  # frames come from the feature cache: the encoder ran once, at `macasr cache build`
        enc_factor = 0
    return {
        "encoder_per_audio_s": enc_fwd / clip, "encoder_own_per_audio_s": by_window["own"],
        "encoder_full_per_audio_s": by_window["full"], "connector_per_audio_s": conn_fwd / clip,
        "llm_prefill_per_audio_s": prefill / clip, "llm_decode_per_token": decode_token,
        "llm_decode_per_audio_s": decode_token * tokens_per_second,
        "inference_per_audio_s": (enc_fwd + conn_fwd + prefill) / clip + decode_token * tokens_per_second,
        "train_per_audio_s": (enc_factor * enc_fwd + 3 * conn_fwd + llm_factor * llm_fwd) / clip,
    }


def _kv_cache_bytes(cfg: Config, meta: MetaModel, shape: dict[str, Any], prompt: int, act: int) -> int:
    """Decoding cache for [eval] batch_size rows (× beams) of a 30 s clip, up to the new-token cap."""
    ev, enc = cfg.eval, meta.encoder_config
    speech = connector_run(meta.connector, enc.max_source_positions, enc.d_model)[1]
    context = prompt + speech + math.ceil(WHISPER_WINDOW_S * ev.max_tokens_per_second) + ev.max_tokens_base
    per_row = sum(2 * shape["kv"] * (min(context, w) if w else context) for w in shape["windows"])
    return ev.batch_size * ev.num_beams * per_row * act
