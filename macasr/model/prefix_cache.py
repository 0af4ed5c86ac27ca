"""The prompt prefix's key/value cache: computed once, shared by every row of every batch.

Every row starts with the same prefix tokens (`Transcribe the following audio to text.\\n\\nAudio:`,
or a chat template's opening), and a frozen LLM gives them the same keys and values every time.
So while no LLM weight trains (the LLM frozen, no LoRA on it), the prefix runs through the LLM
once, without gradients, and each forward starts from a `DynamicCache` holding those states
expanded over the batch; the LLM then runs only on [speech | suffix | target]. A row of the cached
layout is [prefix (cached) | padding | speech | suffix | target]: the prefix sits at positions
0..P-1 in every row, the rest counts on from P, and the padding is masked, so each real token sees
the same keys at the same positions as in the left-padded layout without the cache (the loss and
gradients are equal within float tolerance; tests/test_prefix_cache.py).

The states belong to the loaded model (one `PrefixCache` per `SpeechLLM`): computed on its first
batch and reused by every later one, in training and in decoding alike. They are recomputed when
the LLM's device or dtype, the autocast setting, or any LLM weight changes: a weight's version
counter (bumped by every in-place change: optimizer steps, in-place loads, LoRA merges) or its
storage (a parameter replaced) is part of the key. A forward that builds a graph through the LLM
(grad enabled and an LLM weight, LoRA adapters included, requires grad) runs the prefix in the
rows, so its gradients reach those weights; under `torch.no_grad` or inference mode (decoding,
validation) the cache serves LLMs that train too, so a checkpoint of a model that fine-tuned its
LLM or LoRA decodes with it, and the first batch after an optimizer step recomputes the states.
It is never used while the LLM is in training mode (dropout), nor for models with sliding-window
(or other non-full) attention layers: their window counts columns, and the padding between the
prefix and the speech would move it. `[train] prefix_cache = false` turns it off. Not part of the
key: peft's adapter switches (`disable_adapter`, `set_adapter`), which macasr does not use.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from macasr.model.decoding import cache_kwargs


class _Key(NamedTuple):
    """What the cached states depend on."""

    prefix: tuple[int, ...]
    device: torch.device
    dtype: torch.dtype
    autocast: torch.dtype | None  # the autocast dtype on the LLM's device, None when autocast is off
    weights: tuple[tuple[int, int], ...]  # (storage address, version counter) per LLM parameter


def weight_versions(llm: Any) -> tuple[tuple[int, int], ...]:
    """(storage address, version counter) of every LLM parameter: an in-place change bumps the
    counter, a replaced parameter moves the address. Inference tensors (weights made under
    torch.inference_mode) have no version counter (-1 here); outside inference mode they cannot
    change in place."""
    return tuple((p.data_ptr(), -1 if p.is_inference() else p._version) for p in llm.parameters())


class PrefixCache:
    """The key/value states of the prefix's P token ids through `llm`, one (1, heads, P, head_dim) pair per layer."""

    def __init__(self) -> None:
        self._key: _Key | None = None
        self._states: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._full_attention: dict[int, bool] = {}  # id(llm config) → every cache layer is a plain DynamicLayer

    def usable(self, llm: Any, prefix: tuple[int, ...]) -> bool:
        """True when the cached states equal what the rows would compute: there is a prefix, the LLM
        is in eval mode, no gradient must flow through it (grad disabled, or no LLM weight requires
        grad), and every attention layer sees all earlier columns."""
        if not prefix or llm.training:
            return False
        if torch.is_grad_enabled() and any(p.requires_grad for p in llm.parameters()):
            return False
        return self._full_attention_only(llm)

    def _full_attention_only(self, llm: Any) -> bool:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        found = self._full_attention.get(id(llm.config))
        if found is None:
            layers = DynamicCache(config=llm.config).layers
            found = self._full_attention[id(llm.config)] = all(type(layer) is DynamicLayer for layer in layers)
        return found

    def rows(self, llm: Any, prefix: tuple[int, ...], batch: int) -> Any:
        """A fresh `DynamicCache` holding the prefix's states for `batch` rows (an expanded view of
        the shared states; the forward's update concatenates onto it, never writes into it)."""
        from transformers import DynamicCache

        states = self._current(llm, prefix)
        expanded = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in states]
        return DynamicCache(expanded, config=llm.config)

    def _current(self, llm: Any, prefix: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        weight = llm.get_input_embeddings().weight
        device = weight.device
        autocast = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
        key = _Key(prefix, device, weight.dtype, autocast, weight_versions(llm))
        if key != self._key:
            self._states, self._key = self._compute(llm, prefix), key
        return self._states

    def _compute(self, llm: Any, prefix: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Run the prefix alone (one row, positions 0..P-1) and keep each layer's keys and values.

        Outside inference mode even when called inside it, so the states can later join a
        training forward (inference tensors cannot be saved for backward)."""
        with torch.inference_mode(False), torch.no_grad():
            ids = torch.tensor([prefix], device=llm.get_input_embeddings().weight.device)  # (1, P)
            embeds = llm.get_input_embeddings()(ids)  # as the rows without the cache embed it
            kwargs = cache_kwargs(llm)
            cache = kwargs["cache" if "cache" in kwargs else "past_key_values"]
            llm(inputs_embeds=embeds, attention_mask=torch.ones_like(ids), position_ids=torch.arange(ids.shape[1], device=ids.device)[None],
                logits_to_keep=1, **kwargs)
            return [(layer.keys, layer.values) for layer in cache.layers]
