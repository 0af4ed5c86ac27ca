"""Decoding strategies over a causal LM fed with `inputs_embeds` and a KV cache.

Symbols: B batch, L prompt length (left-padded), V vocabulary.

Prompts are left-padded so every row's next token sits in the last column; explicit position
ids (counted from each row's first real token) make a padded row compute what it would alone.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import inspect

import torch


@dataclasses.dataclass(frozen=True)
class DecodingOptions:
    """How to decode; built from `[eval]`."""

    max_tokens_per_second: float = 15.0  # cap on new tokens per second of audio
    max_tokens_base: int = 16  # tokens allowed on top of the per-second cap

    def max_new_tokens(self, durations: Sequence[float]) -> list[int]:
        """A cap per clip, so a decode that loops stops in time proportional to the audio."""
        return [self.max_tokens_base + math.ceil(d * self.max_tokens_per_second) for d in durations]


def cache_kwargs(llm: Any) -> dict[str, Any]:
    """A fresh KV cache under the keyword this transformers version uses (`cache` from 5.2x on,
    `past_key_values` before); the cache object is updated in place by every forward call."""
    from transformers import DynamicCache

    params = inspect.signature(llm.forward).parameters
    keyword = "cache" if "cache" in params else "past_key_values"
    return {keyword: DynamicCache(config=llm.config), "use_cache": True}


@torch.no_grad()
def greedy_search(
    llm: Any,
    embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    max_new_tokens: Sequence[int],
    end_id: int,
) -> list[list[int]]:
    """Batched greedy decoding; returns each row's new tokens without the end token.

    embeds (B, L, H), attention_mask and position_ids (B, L).
    """
    batch = embeds.shape[0]
    caps = torch.tensor(max_new_tokens, device=embeds.device)
    cache = cache_kwargs(llm)
    out = llm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=1, **cache)
    next_position = position_ids[:, -1:] + 1  # (B, 1)
    done = torch.zeros(batch, dtype=torch.bool, device=embeds.device)
    steps: list[torch.Tensor] = []
    for step in range(int(caps.max())):
        token = out.logits[:, -1].argmax(-1).masked_fill(done, end_id)  # (B,)
        steps.append(token)
        done |= (token == end_id) | (step + 1 >= caps)
        if bool(done.all()):
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=1)
        out = llm(input_ids=token[:, None], attention_mask=attention_mask, position_ids=next_position, **cache)
        next_position = next_position + 1
    tokens = torch.stack(steps, dim=1).tolist()  # (B, steps)
    return [row[: row.index(end_id)] if end_id in row else row for row in tokens]
