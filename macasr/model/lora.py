"""LoRA adapters (via peft) on the LLM or the encoder: the config here, applied in model/build.py.

With LoRA on, a model's base weights stay frozen and unchanged; only the adapters (and the
connector) train, and they are saved in the checkpoint like any trainable weight.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from macasr.errors import ConfigError
from macasr.registry import option

if TYPE_CHECKING:  # torch is imported where it is used: `macasr.config` imports LoraConfig, and the CLI starts without torch
    from torch import nn

LLM_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]  # attention projections in Qwen, Llama, Gemma
WHISPER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    enabled: bool = option(False, "Train LoRA adapters on this model; its base weights stay frozen.")
    r: int = option(16, "Adapter rank.")
    alpha: int = option(32, "Adapters are scaled by alpha / r.")
    dropout: float = option(0.05, "Dropout on the adapters' input while training.")
    target_modules: list[str] = option(LLM_TARGETS, "Names of the linear layers that get adapters.")

    def validate(self) -> list[str]:
        problems = []
        if self.r < 1:
            problems.append(f"r: must be at least 1, got {self.r}")
        if self.alpha <= 0:
            problems.append(f"alpha: must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout: must be in [0, 1), got {self.dropout}")
        if self.enabled and not self.target_modules:
            problems.append("target_modules: name at least one layer")
        return problems


def apply_lora(module: nn.Module, cfg: LoraConfig, key: str) -> nn.Module:
    """Inject LoRA adapters into `module` in place and make them its only trainable weights.

    `peft.inject_adapter_in_model` swaps the target Linear layers for LoRA layers but keeps the
    module's own class, so an HF model's `forward` (inputs_embeds, logits_to_keep, the cache
    keyword) and `get_input_embeddings` work as before. Adapters are fp32 even over a bf16 base,
    so their small updates are not rounded away. `key` names the config table in errors.
    """
    import peft
    from torch import nn

    targets = check_targets(module, cfg.target_modules, key)
    module.requires_grad_(False)
    conv1d = all(not isinstance(m, nn.Linear) for m in targets)  # GPT-2's Conv1D stores weights transposed
    peft_cfg = peft.LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules), bias="none",
        fan_in_fan_out=conv1d,
    )
    peft.inject_adapter_in_model(peft_cfg, module)
    for layer in lora_layers(module):
        for name in layer.adapter_layer_names:
            getattr(layer, name).float()
    return module


def lora_layers(module: nn.Module) -> list[nn.Module]:
    """The peft layers that hold adapters inside `module` (empty without LoRA)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


def adapter_parameter_count(module: nn.Module) -> int:
    """Parameters in the LoRA adapters of `module` (A and B matrices), 0 without LoRA."""
    return sum(
        p.numel() for layer in lora_layers(module) for name in layer.adapter_layer_names
        for p in getattr(layer, name).parameters()
    )


def _linear_types() -> tuple[type, ...]:
    from torch import nn
    from transformers.pytorch_utils import Conv1D  # GPT-2 style "linear" layers

    return (nn.Linear, Conv1D)


def check_targets(module: nn.Module, targets: list[str], key: str) -> list[nn.Module]:
    """The layers `targets` name; every name must match at least one linear layer, the way peft
    matches names (the full module name or its last dotted parts): peft itself only fails when
    no name matches anything, and would silently skip a misspelt one."""
    modules = dict(module.named_modules())
    linear = [name for name, m in modules.items() if isinstance(m, _linear_types())]
    found: list[nn.Module] = []
    for target in targets:
        matched = [name for name in modules if name == target or name.endswith(f".{target}")]
        wrong = [name for name in matched if not isinstance(modules[name], _linear_types())]
        if matched and not wrong:
            found.extend(modules[name] for name in matched)
            continue
        leaves = list(dict.fromkeys(name.rpartition(".")[2] for name in linear))
        problem = f"matches {wrong[0]!r}, which is not a linear layer" if wrong else "matches no layer"
        raise ConfigError(
            f"[{key}] target_modules: {target!r} {problem}; linear layers here include: {', '.join(leaves[:10])}"
        )
    return found
