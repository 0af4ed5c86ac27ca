"""The decoder-only LLM side: loading, end/BOS/pad repair and the prompt's token ids.

The model must learn to stop, so every target ends with an explicit end token that stays in the
loss. Padding is tracked with lengths and masks, never by comparing ids with `pad_token_id`, so
tokenizers that have no pad token or reuse eos as pad are handled the same way.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch

from macasr.errors import MacasrError
from macasr.model._hf import loading

if TYPE_CHECKING:
    from macasr.config import LLMConfig, PromptConfig


@dataclasses.dataclass(frozen=True)
class PromptTokens:
    """Token ids around the speech embeddings, identical in training and generation."""

    prefix: tuple[int, ...]  # BOS first when the tokenizer expects one
    suffix: tuple[int, ...]
    end_id: int  # appended to every target; generation stops on it


def load_llm(cfg: LLMConfig, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """AutoModelForCausalLM + AutoTokenizer from a hub id or a local folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    common = {"trust_remote_code": cfg.trust_remote_code}
    with loading("model.llm", cfg.path):
        tokenizer = AutoTokenizer.from_pretrained(cfg.path, **common)
        model = AutoModelForCausalLM.from_pretrained(
            cfg.path, dtype=dtype, attn_implementation=cfg.attn_implementation, **common
        )
    return model, tokenizer


def hidden_size(model: Any) -> int:
    """The LLM's input embedding width, read from the model (gemma-3-1b is 1152, not 1536)."""
    return model.get_input_embeddings().embedding_dim


def end_token_id(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise MacasrError(f"tokenizer of {tokenizer.name_or_path!r} has no eos token to end transcripts with")
    return int(tokenizer.eos_token_id)


def expects_bos(tokenizer: Any) -> bool:
    """True when the tokenizer itself puts BOS in front of encoded text (Gemma, Llama)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True).input_ids[:1] == [bos]


def prompt_tokens(tokenizer: Any, prompt: PromptConfig) -> PromptTokens:
    prefix = tokenizer(prompt.prefix, add_special_tokens=False).input_ids
    if expects_bos(tokenizer):
        prefix = [tokenizer.bos_token_id, *prefix]
    suffix = tokenizer(prompt.suffix, add_special_tokens=False).input_ids
    return PromptTokens(tuple(prefix), tuple(suffix), end_token_id(tokenizer))


class TargetTokenizer:
    """Transcript → target ids ending in the end token. Picklable for DataLoader workers."""

    def __init__(self, tokenizer: Any, end_id: int) -> None:
        self.tokenizer = tokenizer
        self.end_id = end_id

    def __call__(self, text: str) -> list[int]:
        return [*self.tokenizer(text, add_special_tokens=False).input_ids, self.end_id]
