"""Tiny real models for tests and the demo, built from configs and saved with `save_pretrained`.

They are loaded back through the very `from_pretrained` path users take with hub ids, so tests
exercise the real loading code. Nothing here downloads anything.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from pathlib import Path

import torch

from macasr.config import DEFAULT_PREFIX, DEFAULT_SUFFIX

END_TOKEN = "<|endoftext|>"
UNK_TOKEN = "<unk>"
PROMPT_WEIGHT = 1_000  # times the prompt strings count in tokenizer training


def train_tokenizer(texts: Iterable[str], vocab_size: int = 300):
    """A small BPE tokenizer (SentencePiece-style spaces) trained on `texts` plus the prompt.

    Its alphabet holds all printable ASCII, so any English prompt can be encoded. eos doubles as
    pad, as in Qwen3's base tokenizer, the case where a careless collate would mask eos away.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    alphabet = sorted(set(string.printable) - set(" \t\r\x0b\x0c"))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[END_TOKEN, UNK_TOKEN], initial_alphabet=alphabet, show_progress=False
    )
    # The prompt is in every example, so weight it like a frequent phrase: its words become
    # single tokens, as they are in real LLM vocabularies, instead of ~50 characters.
    tok.train_from_iterator([*texts, *[DEFAULT_PREFIX, DEFAULT_SUFFIX] * PROMPT_WEIGHT], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=END_TOKEN, pad_token=END_TOKEN, unk_token=UNK_TOKEN)


def save_tiny_whisper(path: str | Path, *, d_model: int = 32, layers: int = 2, heads: int = 2, num_mel_bins: int = 80, seed: int = 0) -> Path:
    """A Whisper checkpoint (encoder + a one-layer decoder, as on the hub) and its feature extractor."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=64, num_mel_bins=num_mel_bins, d_model=d_model, encoder_layers=layers, decoder_layers=1,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=4 * d_model,
        decoder_ffn_dim=4 * d_model, max_source_positions=1500, max_target_positions=32,
        pad_token_id=1, bos_token_id=2, eos_token_id=2, decoder_start_token_id=3,
    )
    path = Path(path)
    WhisperForConditionalGeneration(config).save_pretrained(path)
    WhisperFeatureExtractor(feature_size=num_mel_bins).save_pretrained(path)
    return path


def save_tiny_qwen3(path: str | Path, tokenizer, *, hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2, seed: int = 0) -> Path:
    """A Qwen3 causal LM with tied embeddings, sized to `tokenizer`, saved with the tokenizer."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
        max_position_embeddings=2048, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    path = Path(path)
    Qwen3ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
