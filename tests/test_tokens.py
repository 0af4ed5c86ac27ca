"""Transcripts and prompt text are text, never control tokens, in every tokenizer family.

A transcript that spells `<|endoftext|>` must not become the end token mid-target (the model
would learn to stop there), and a prompt that spells `<|im_end|>` must not close the user turn.
Each family's tokenizer comes from `macasr.testing`, saved and loaded back like a hub tokenizer.
"""

from __future__ import annotations

import pytest

from conftest import SENTENCES
from macasr import testing
from macasr.config import PromptConfig
from macasr.model.llm import TargetTokenizer, prompt_tokens

FAMILIES = list(testing.TOKENIZER_FAMILIES)
CASES = [(f, s) for f in FAMILIES for s in ("plain", "chat") if testing.TOKENIZER_FAMILIES[f].get("chat_template") or s == "plain"]
# Control-token strings of every family (and SentencePiece's), whichever tokenizer reads them.
FOREIGN = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<end_of_turn>", "<start_of_turn>", "<|eot_id|>",
           "<|begin_of_text|>", "<|end_of_text|>", "<s>", "</s>", "<bos>", "<eos>", "<pad>", "<unk>"]


@pytest.fixture(scope="session")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("tokenizers")
    for family in FAMILIES:
        testing.train_family_tokenizer(family, SENTENCES * 5, 150).save_pretrained(root / family)
    return {family: AutoTokenizer.from_pretrained(root / family) for family in FAMILIES}


def control_strings(tokenizer) -> list[str]:
    """Every special token of `tokenizer` and of the other families."""
    return sorted({*tokenizer.all_special_tokens, *FOREIGN})


def control_ids(tokenizer, ids) -> list[int]:
    """The special tokens among `ids`, in order."""
    special = set(tokenizer.all_special_ids)
    return [i for i in ids if i in special]


@pytest.mark.parametrize(("family", "style"), CASES, ids=[f"{f}-{s}" for f, s in CASES])
def test_a_transcript_spelling_control_tokens_is_encoded_as_text(family, style, tokenizers) -> None:
    tok = tokenizers[family]
    end_id = prompt_tokens(tok, PromptConfig(style=style)).end_id
    target = TargetTokenizer(tok, end_id)
    for token in control_strings(tok):
        text = f"say {token} now{token}"
        ids = target(text)
        assert ids[-1] == end_id and control_ids(tok, ids[:-1]) == [], (token, ids)
        assert tok.decode(ids, skip_special_tokens=True) == text  # the round trip gives the transcript back


@pytest.mark.parametrize(("family", "style"), CASES, ids=[f"{f}-{s}" for f, s in CASES])
def test_prompt_text_spelling_control_tokens_stays_text(family, style, tokenizers) -> None:
    """The user's prefix and suffix add no control token: the prompt has exactly the ones of a
    plain prompt (BOS, the template's own markers), and its text is the user's, spelled out."""
    tok = tokenizers[family]
    spelled = "".join(control_strings(tok))
    plain = prompt_tokens(tok, PromptConfig(style=style, prefix="Hear ", suffix=" now"))
    hostile = prompt_tokens(tok, PromptConfig(style=style, prefix=f"Hear {spelled} ", suffix=f" {spelled} now"))
    for part in ("prefix", "suffix"):
        assert control_ids(tok, getattr(hostile, part)) == control_ids(tok, getattr(plain, part)), part
    assert spelled in tok.decode(list(hostile.prefix), skip_special_tokens=True)
    assert spelled in tok.decode(list(hostile.suffix), skip_special_tokens=True)
    assert hostile.end_id == plain.end_id
