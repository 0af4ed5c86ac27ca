"""The decoder-only LLM side: loading, end/BOS/pad handling and the prompt's token ids.

The model must learn to stop, so every target ends with an explicit end token that stays in the
loss: eos for `[prompt] style = "plain"`, the chat template's turn terminator for `style = "chat"`
(Qwen3 `<|im_end|>`, Gemma 3 `<end_of_turn>`, Llama 3 `<|eot_id|>`). BOS leads the prompt only
when the tokenizer adds one itself (Gemma, Llama; not Qwen or GPT-2). Padding is tracked with
lengths and masks, never by comparing ids with `pad_token_id`, so tokenizers that have no pad
token (Llama 3, GPT-2) or reuse eos as pad (Qwen3) are handled the same way.

Transcripts and the user's prompt text are text, never control tokens: a transcript holding
`<|endoftext|>`, `<|im_end|>`, `<end_of_turn>`, `<s>`... is encoded as those characters
(`text_ids`), so special tokens appear only where macasr puts them (BOS, the chat template's own
markers, the end token). A tokenizer that cannot encode plain text is refused at load.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from macasr.errors import ConfigError, MacasrError
from macasr.model._hf import loading, locate

if TYPE_CHECKING:
    from macasr.config import LLMConfig, PromptConfig

SPEECH_PLACEHOLDER = "<|macasr_speech|>"  # where the speech embeddings go in the rendered chat prompt
REPLY_MARKER = "macasr-assistant-reply"  # an assistant message, to find what the template writes after it
# Passed to every chat template; templates that do not use a variable ignore it. Qwen3's hybrid
# templates answer without a <think> block, and Llama 3.2's date line stays fixed instead of
# following the clock, so training and inference days render the same prompt.
CHAT_TEMPLATE_KWARGS = {"enable_thinking": False, "date_string": "26 Jul 2024"}
# Encoded and decoded at load: a tokenizer that loses any of it would train on wrong or empty targets.
PROBE_TEXT = "The quick brown fox jumps over the lazy dog, 0123456789."
# A tokenizer's vocabulary lives in one of these (fast; SentencePiece; byte-level BPE with merges.txt).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


@dataclasses.dataclass(frozen=True)
class PromptTokens:
    """Token ids around the speech embeddings, identical in training and generation."""

    prefix: tuple[int, ...]  # BOS first when the tokenizer expects one
    suffix: tuple[int, ...]
    end_id: int  # appended to every target; generation stops on it


def load_llm(cfg: LLMConfig, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """AutoModelForCausalLM + AutoTokenizer from a hub id or a local folder (see `_hf.locate`).

    Raises MacasrError for a path that is nowhere and for a tokenizer that cannot encode text.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = locate("model.llm", cfg.path, {"config.json": "the model's architecture"})
    common = {"trust_remote_code": cfg.trust_remote_code}
    with loading("model.llm", cfg.path, offline=source.offline):
        tokenizer = AutoTokenizer.from_pretrained(source.path, **common)
        check_tokenizer(tokenizer, cfg.path)
        model = AutoModelForCausalLM.from_pretrained(
            source.path, dtype=dtype, attn_implementation=cfg.attn_implementation, **common
        )
    return model, tokenizer


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """`text` as plain text: special-token strings in it (`<|endoftext|>`, `<s>`, ...) are spelled
    out like any other characters, never matched as the control tokens they name; nothing added."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids


def check_tokenizer(tokenizer: Any, path: str) -> None:
    """Refuse a tokenizer that does not give `PROBE_TEXT` back (a folder without tokenizer files
    loads one that encodes every transcript as nothing). Raises MacasrError naming `path`."""
    back = tokenizer.decode(text_ids(tokenizer, PROBE_TEXT), skip_special_tokens=True)
    if back.split() == PROBE_TEXT.split():
        return
    folder = Path(path).expanduser()
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise MacasrError(
            f"[model.llm] path: cannot load {path!r}: the folder has no tokenizer files (tokenizer.json, tokenizer.model, or vocab.json and "
            "merges.txt), so every transcript would encode as nothing; copy them from the model's hub repo"
        )
    raise MacasrError(f"[model.llm] path: cannot load {path!r}: its tokenizer cannot encode plain text: {PROBE_TEXT!r} decodes back as {back!r}")


def hidden_size(model: Any) -> int:
    """The LLM's input embedding width, read from the model (gemma-3-1b is 1152, not 1536)."""
    return model.get_input_embeddings().embedding_dim


def end_token_id(tokenizer: Any) -> int:
    """The end token of `style = "plain"`: the tokenizer's eos."""
    if tokenizer.eos_token_id is None:
        raise MacasrError(f"tokenizer of {tokenizer.name_or_path!r} has no eos token to end transcripts with")
    return int(tokenizer.eos_token_id)


def expects_bos(tokenizer: Any) -> bool:
    """True when the tokenizer itself puts BOS in front of encoded text (Gemma, Llama)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True).input_ids[:1] == [bos]


def render_chat(tokenizer: Any, messages: list[dict[str, str]], *, add_generation_prompt: bool) -> str:
    """The tokenizer's own chat template applied to `messages`, as text."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f'[prompt] style = "chat" needs a tokenizer with a chat template, and {tokenizer.name_or_path!r} has none; '
            'use style = "plain"'
        )
    return tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False, **CHAT_TEMPLATE_KWARGS)


def chat_end_token_id(tokenizer: Any) -> int:
    """The token that closes an assistant turn in the chat template: the end token of `style = "chat"`.

    Rule: render a user turn and an assistant turn whose text is a marker, and take the first token
    the template writes after the marker when it is an added (control) token, such as Qwen's
    `<|im_end|>`, Gemma's `<end_of_turn>` or Llama 3's `<|eot_id|>` (templates that end a turn with
    eos give eos this way). When the template writes nothing or plain text there, eos ends the turn.
    """
    text = render_chat(tokenizer, [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": REPLY_MARKER}], add_generation_prompt=False)
    _, found, after = text.partition(REPLY_MARKER)
    ids = tokenizer(after.lstrip(), add_special_tokens=False).input_ids if found else []
    if ids and ids[0] in tokenizer.added_tokens_decoder:
        return int(ids[0])
    return end_token_id(tokenizer)


def chat_prompt_ids(tokenizer: Any, prompt: PromptConfig) -> tuple[list[int], list[int]]:
    """Token ids before and after the speech in the chat template's generation prompt.

    One user message `prefix + <speech> + suffix`, rendered up to the assistant's turn and split at
    the speech placeholder. The template's own control tokens (BOS included where it writes one)
    become tokens; the same strings inside prefix or suffix stay text (transformers'
    `sanitize_control_tokens`). The placeholder is an added token of a copy of the tokenizer, so
    the split falls between tokens. Raises ConfigError.
    """
    content = prompt.prefix + SPEECH_PLACEHOLDER + prompt.suffix
    render_chat(tokenizer, [{"role": "user", "content": content}], add_generation_prompt=True)  # has a template?
    marked = copy.deepcopy(tokenizer)
    marked.add_tokens([SPEECH_PLACEHOLDER])  # not special, so sanitizing leaves it a token
    speech = marked.convert_tokens_to_ids(SPEECH_PLACEHOLDER)
    try:
        ids = marked.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=True, return_dict=False,
            sanitize_control_tokens=True, **CHAT_TEMPLATE_KWARGS,
        )
    except ValueError as e:  # a control token that the tokenizer also produces from plain text
        raise ConfigError(f"[prompt] prefix: cannot encode the prompt as text for {tokenizer.name_or_path!r}: {e}") from e
    if ids.count(speech) != 1:
        raise ConfigError(f"[prompt] style: the chat template of {tokenizer.name_or_path!r} does not keep the user message's text as written")
    at = ids.index(speech)
    return ids[:at], ids[at + 1 :]


def prompt_tokens(tokenizer: Any, prompt: PromptConfig) -> PromptTokens:
    """The prompt's token ids and the end token for `prompt.style`.

    plain: prefix and suffix encoded as plain text (`text_ids`), eos as the end token.
    chat: the tokenizer's chat template (see `chat_prompt_ids`), its turn terminator as the end
    token (see `chat_end_token_id`).
    BOS leads the prefix exactly when the tokenizer adds one itself, and never twice.
    """
    if prompt.style == "chat":
        prefix, suffix = chat_prompt_ids(tokenizer, prompt)
        end_id = chat_end_token_id(tokenizer)
    else:
        prefix, suffix = text_ids(tokenizer, prompt.prefix), text_ids(tokenizer, prompt.suffix)
        end_id = end_token_id(tokenizer)
    if expects_bos(tokenizer) and prefix[:1] != [tokenizer.bos_token_id]:
        prefix = [tokenizer.bos_token_id, *prefix]
    return PromptTokens(tuple(prefix), tuple(suffix), end_id)


class TargetTokenizer:
    """Transcript → target ids ending in the end token. Picklable for DataLoader workers.

    The transcript is plain text (`text_ids`): the end token comes only from here, never from
    a transcript that happens to spell it.
    """

    def __init__(self, tokenizer: Any, end_id: int) -> None:
        self.tokenizer = tokenizer
        self.end_id = end_id

    def __call__(self, text: str) -> list[int]:
        return [*text_ids(self.tokenizer, text), self.end_id]
