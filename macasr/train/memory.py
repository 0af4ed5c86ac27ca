"""Training-only memory and speed options of `[train]`: gradient checkpointing of the LLM and
`torch.compile` of the connector (see docs/training.md, "Precision and memory").

The prompt prefix's key/value cache (`[train] prefix_cache`) lives with the model
(`macasr.model.prefix_cache`), since decoding uses it too; precision is set when the model is
built (`macasr.model.build`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from macasr.errors import ConfigError

if TYPE_CHECKING:
    from macasr.config import Config
    from macasr.model.speech_llm import SpeechLLM


def apply_training_options(model: SpeechLLM, cfg: Config) -> list[str]:
    """Switch on what `[train] gradient_checkpointing` and `compile_connector` ask for → one
    line per option applied, for the start-up banner. Raises ConfigError when the LLM cannot be
    checkpointed."""
    applied = []
    if cfg.train.gradient_checkpointing:
        enable_gradient_checkpointing(model.llm)
        applied.append("gradient checkpointing of the LLM")
    if cfg.train.compile_connector:
        compile_connector(model)
        applied.append("torch.compile of the connector")
    return applied


def enable_gradient_checkpointing(llm: Any) -> None:
    """Recompute each LLM layer's activations in the backward pass instead of storing them.

    Non-reentrant checkpointing (`use_reentrant=False`): it needs no input that requires grad,
    so LoRA adapters train as usual. transformers checkpoints a layer only in training mode,
    which is why config validation refuses the option for a frozen LLM without LoRA.
    """
    if not getattr(llm, "supports_gradient_checkpointing", False):
        raise ConfigError(f"[train] gradient_checkpointing: {type(llm).__name__} does not support gradient checkpointing; set it to false")
    enable = getattr(llm, "activation_checkpointing_enable", None)
    if enable is not None:  # transformers 5.2x
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # Training forwards run without a KV cache; asking for one would make every checkpointed layer warn.
    llm.config.use_cache = False


def compile_connector(model: SpeechLLM) -> None:
    """`torch.compile` the connector in place (`nn.Module.compile`), so its state_dict keys and
    checkpoints stay as they are; dynamic shapes, since every batch has its own length."""
    model.connector.compile(dynamic=True)
