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


def perturb_trainable(model: torch.nn.Module, scale: float = 0.05) -> None:
    """Nudge every trainable weight away from its initial value, as training would, so a
    checkpoint round trip that silently drops weights changes the model's output."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * scale)


def save_tiny_whisper(path: str | Path, *, d_model: int = 32, layers: int = 2, heads: int = 2, num_mel_bins: int = 80,
                      hop_length: int = 160, seed: int = 0) -> Path:
    """A Whisper checkpoint (encoder + a one-layer decoder, as on the hub) and its feature extractor.

    `hop_length` is the log-mel hop in samples at 16 kHz (Whisper's own: 160, 10 ms); the
    encoder's frame rate is 16000 / hop_length / 2, and its 30 s window holds 480000 / hop_length
    mel frames, so max_source_positions follows the hop."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=64, num_mel_bins=num_mel_bins, d_model=d_model, encoder_layers=layers, decoder_layers=1,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=4 * d_model,
        decoder_ffn_dim=4 * d_model, max_source_positions=480_000 // hop_length // 2, max_target_positions=32,
        pad_token_id=1, bos_token_id=2, eos_token_id=2, decoder_start_token_id=3,
    )
    path = Path(path)
    WhisperForConditionalGeneration(config).save_pretrained(path)
    WhisperFeatureExtractor(feature_size=num_mel_bins, hop_length=hop_length).save_pretrained(path)
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


# --- Tiny LLMs of other families: Gemma 3, Llama 3, GPT-2, and Qwen3 with its chat template ---

# Simplified copies of the real families' chat templates: the same turn markers, BOS handling and
# generation prompt (Qwen3's `enable_thinking=False` empty think block included).
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (message['content'] | trim) + '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)
LLAMA3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + (message['content'] | trim) + '<|eot_id|>' %}"
    "{%- if loop.index0 == 0 %}{%- set content = bos_token + content %}{%- endif %}"
    "{{- content }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

# Tokenizer settings per family, as in the real tokenizer_config.json files: Qwen3-Base (no BOS,
# eos doubles as pad, ChatML turns), Gemma 3 (BOS added, its own pad), Llama 3 (BOS added, no
# pad), GPT-2 (one <|endoftext|> for bos and eos, no pad, nothing added, no chat template).
TOKENIZER_FAMILIES: dict[str, dict] = {
    "qwen3": {
        "eos_token": END_TOKEN, "pad_token": END_TOKEN, "add_bos_token": False,
        "extra_special_tokens": ["<|im_start|>", "<|im_end|>"], "chat_template": QWEN3_CHAT_TEMPLATE,
    },
    "gemma3": {
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "add_bos_token": True,
        "extra_special_tokens": ["<start_of_turn>", "<end_of_turn>"], "chat_template": GEMMA3_CHAT_TEMPLATE,
    },
    "llama3": {
        "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "add_bos_token": True,
        "extra_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "chat_template": LLAMA3_CHAT_TEMPLATE,
    },
    "gpt2": {"bos_token": END_TOKEN, "eos_token": END_TOKEN, "add_bos_token": False},
}
QWEN3_THINK_TOKENS = ["<think>", "</think>"]  # added but not special in Qwen3, so decoding keeps them


def train_family_tokenizer(family: str, texts: Iterable[str], vocab_size: int = 300):
    """`train_tokenizer`'s vocabulary dressed as `family`'s tokenizer (see TOKENIZER_FAMILIES)."""
    from transformers import PreTrainedTokenizerFast

    base = train_tokenizer(texts, vocab_size)
    settings = TOKENIZER_FAMILIES[family]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer, unk_token=UNK_TOKEN, **settings)
    if family == "qwen3":
        tokenizer.add_tokens(QWEN3_THINK_TOKENS)
    return tokenizer


def _special_ids(tokenizer) -> dict[str, int | None]:
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


def save_tiny_gemma3(
    path: str | Path, tokenizer, *, hidden: int = 48, layers: int = 2, heads: int = 4, kv_heads: int = 1,
    head_dim: int = 8, sliding_window: int = 8, seed: int = 0,
) -> Path:
    """A Gemma 3 text model; like gemma-3-1b, heads × head_dim (32) differs from the width (48),
    and all layers but the last use a sliding window (short, so tiny prompts exceed it)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, query_pre_attn_scalar=head_dim,
        sliding_window=sliding_window, layer_types=["sliding_attention"] * (layers - 1) + ["full_attention"],
        max_position_embeddings=2048, tie_word_embeddings=True, **_special_ids(tokenizer),
    )
    path = Path(path)
    Gemma3ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_llama3(path: str | Path, tokenizer, *, hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2, seed: int = 0) -> Path:
    """A Llama causal LM with tied embeddings (as Llama 3.2 1B), sized to `tokenizer`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=2048,
        tie_word_embeddings=True, **_special_ids(tokenizer),
    )
    path = Path(path)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_gpt2(path: str | Path, tokenizer, *, hidden: int = 32, layers: int = 2, heads: int = 4, seed: int = 0) -> Path:
    """A GPT-2 LM head model (learned absolute positions, no pad token), sized to `tokenizer`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=hidden, n_layer=layers, n_head=heads, n_positions=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    path = Path(path)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_llm(family: str, path: str | Path, texts: Iterable[str], *, vocab_size: int = 150, seed: int = 0) -> Path:
    """A tiny `family` LLM ("qwen3", "gemma3", "llama3", "gpt2") with its family-style tokenizer."""
    savers = {"qwen3": save_tiny_qwen3, "gemma3": save_tiny_gemma3, "llama3": save_tiny_llama3, "gpt2": save_tiny_gpt2}
    return savers[family](path, train_family_tokenizer(family, texts, vocab_size), seed=seed)


def save_tiny_ssl_encoder(
    path: str | Path, family: str, *, hidden: int = 32, layers: int = 2, heads: int = 2,
    conv_dim: tuple[int, ...] = (32, 32, 32), conv_kernel: tuple[int, ...] = (10, 3, 3), conv_stride: tuple[int, ...] = (5, 4, 4),
    feat_extract_norm: str = "layer", do_normalize: bool = True, seed: int = 0,
) -> Path:
    """A tiny HuBERT, WavLM or wav2vec2 (`family` = its model_type) and its feature extractor.

    "layer" norm builds the large models' layout (per-frame conv norm, pre-norm transformer),
    "group" the base models' (conv norm over time, post-norm). The default stack strides 80
    samples (200 frames per second), unlike the released models' 320, so tests see the frame
    rate come from the config.
    """
    from transformers import AutoConfig, AutoModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        family, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=2 * hidden,
        conv_dim=conv_dim, conv_kernel=conv_kernel, conv_stride=conv_stride, num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4, feat_extract_norm=feat_extract_norm, do_stable_layer_norm=feat_extract_norm == "layer",
        layerdrop=0.0,  # every layer runs in training too, so tests know which weights learn
    )
    path = Path(path)
    AutoModel.from_config(config).save_pretrained(path)
    Wav2Vec2FeatureExtractor(do_normalize=do_normalize, return_attention_mask=feat_extract_norm == "layer").save_pretrained(path)
    return path
