"""Config → SpeechLLM: look components up by name, load weights, freeze, place on a device."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

from macasr.config import device_problem
from macasr.errors import ConfigError
from macasr.model.connectors import CONNECTORS
from macasr.model.encoders import ENCODERS
from macasr.model.llm import hidden_size, load_llm, prompt_tokens
from macasr.model.lora import adapter_parameter_count, apply_lora
from macasr.model.speech_llm import SpeechLLM

if TYPE_CHECKING:
    from macasr.config import Config

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def resolve_device(name: str, source: str = "device") -> torch.device:
    """`auto` → cuda when available, else cpu; any other name must be valid and present here.

    Raises a one-line ConfigError naming `source` (`--device`, `[train] device`), the value and
    what to do, instead of torch's error at the first tensor moved to a missing device.
    """
    problem = device_problem(name)
    if problem:
        raise ConfigError(f"{source}: {problem}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    missing = _unavailable(device)
    if missing:
        raise ConfigError(f"{source} {name!r}: {missing}; use auto or cpu")
    return device


def _unavailable(device: torch.device) -> str | None:
    """Why `device` cannot be used on this machine, or None."""
    if device.type == "cpu":
        return None
    if device.type == "mps":
        backend, label = torch.backends.mps, "torch.backends.mps"
    else:
        backend, label = getattr(torch, device.type), f"torch.{device.type}"
    if not backend.is_available():
        return f"{device.type} requested but {label}.is_available() is false{_why_no_cuda() if device.type == 'cuda' else ''}"
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if (device.index or 0) >= count:
        return f"{device} requested but {count} {device.type} device{'s are' if count != 1 else ' is'} visible"
    return None


def _why_no_cuda() -> str:
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return f" (this torch {torch.__version__} is a CPU-only build)"
    return " (no GPU visible: check the NVIDIA driver with nvidia-smi, and CUDA_VISIBLE_DEVICES)"


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto → bf16 on CUDA GPUs that compute in bf16 natively (Ampere and later), fp32 elsewhere:
    on CPU bf16 is slow and lossy, and torch emulates bf16 on older GPUs (V100, T4) at a fraction
    of their fp32 speed, which `is_bf16_supported()` counts as support unless told not to."""
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return "bf16"
    return "fp32"


def build_model(cfg: Config, device: torch.device | str = "cpu", precision: str = "fp32") -> SpeechLLM:
    """Frozen parts are loaded in the compute dtype; trainable parts stay fp32 (autocast does the rest).

    A part is either frozen, fully trained (`train = true`) or frozen under trained LoRA adapters
    (`lora.enabled`); config validation refuses both at once, and so does this function, so
    asking for LoRA can never fall back to full fine-tuning.
    """
    device = torch.device(device)
    compute = DTYPES[precision]
    enc_cfg, llm_cfg = cfg.model.encoder, cfg.model.llm
    problems = [*enc_cfg.validate(), *llm_cfg.validate()]
    if problems:
        raise ConfigError(problems)
    encoder = ENCODERS.build(enc_cfg, dtype=torch.float32 if enc_cfg.train else compute)
    llm, tokenizer = load_llm(llm_cfg, dtype=torch.float32 if llm_cfg.train else compute)
    connector = CONNECTORS.build(cfg.model.connector, encoder.output_dim, hidden_size(llm))
    encoder.requires_grad_(enc_cfg.train)
    llm.requires_grad_(llm_cfg.train)
    if enc_cfg.lora.enabled:
        apply_lora(encoder, enc_cfg.lora, "model.encoder.lora")  # lands in the HF model at encoder.model
    if llm_cfg.lora.enabled:
        apply_lora(llm, llm_cfg.lora, "model.llm.lora")
    model = SpeechLLM(encoder, connector, llm, tokenizer, prompt_tokens(tokenizer, cfg.prompt), prefix_cache=cfg.train.prefix_cache)
    return model.to(device)


class PartCount(NamedTuple):
    total: int  # every parameter of the part, LoRA adapters included
    trainable: int
    adapters: int  # LoRA A and B matrices (0 without LoRA)


def parameter_counts(model: SpeechLLM) -> dict[str, PartCount]:
    """{part: counts} for the encoder, connector and LLM."""
    counts = {}
    for part in ("encoder", "connector", "llm"):
        module = getattr(model, part)
        params = list(module.parameters())
        counts[part] = PartCount(
            sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad),
            adapter_parameter_count(module),
        )
    return counts


def autocast(device: torch.device, precision: str):
    """bf16 autocast for precision "bf16" (auto's choice on CUDA; asked for explicitly on CPU); a
    no-op context in fp32. Weights that train stay fp32 (`build_model`), so autocast computes in
    bf16 while gradients and AdamW updates land on fp32 master weights (no loss scaling needed)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
