"""LoRA adapters (via peft) on the LLM or the encoder: the config here, applied in model/build.py.

With LoRA on, a model's base weights stay frozen and unchanged; only the adapters (and the
connector) train, and they are saved in the checkpoint like any trainable weight.
"""

from __future__ import annotations

import dataclasses

from macasr.registry import option

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
