"""Every LLM family × prompt style: BOS, end token, prompt identity, widths and learning to stop.

Each family's tiny model and tokenizer come from `macasr.testing` (special tokens, BOS habit and
chat template as in the real family) and are loaded through `from_pretrained` like hub ids.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import SENTENCES, noise
from macasr import testing
from macasr.config import Config, replace
from macasr.data.collate import Example, collate
from macasr.errors import MacasrError
from macasr.model.build import build_model
from macasr.model.decoding import greedy_search
from macasr.model.llm import TargetTokenizer, chat_end_token_id, hidden_size

FAMILIES = ["qwen3", "gemma3", "llama3", "gpt2"]
CASES = [(f, s) for f in FAMILIES for s in ("plain", "chat") if testing.TOKENIZER_FAMILIES[f].get("chat_template") or s == "plain"]
# The families' own conventions, as in their hub tokenizers.
END_TOKEN = {
    ("qwen3", "plain"): "<|endoftext|>", ("qwen3", "chat"): "<|im_end|>",
    ("gemma3", "plain"): "<eos>", ("gemma3", "chat"): "<end_of_turn>",
    ("llama3", "plain"): "<|end_of_text|>", ("llama3", "chat"): "<|eot_id|>",
    ("gpt2", "plain"): "<|endoftext|>",
}
BOS = {"qwen3": None, "gemma3": "<bos>", "llama3": "<|begin_of_text|>", "gpt2": None}
USER_TURN = {"qwen3": "<|im_start|>user", "gemma3": "<start_of_turn>user", "llama3": "<|start_header_id|>user<|end_header_id|>"}
ASSISTANT_TURN = {"qwen3": "<|im_start|>assistant", "gemma3": "<start_of_turn>model", "llama3": "<|start_header_id|>assistant<|end_header_id|>"}
TEXTS = ["the cat sat on the mat", "hello world"]
SECONDS = [1.2, 0.7]


@pytest.fixture(scope="session")
def family_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {f: testing.save_tiny_llm(f, root / f, SENTENCES * 5) for f in FAMILIES}


def family_config(tiny_config: Config, family_models: dict[str, Path], family: str, style: str, **changes) -> Config:
    return replace(tiny_config, **{"model.llm.path": str(family_models[family]), "prompt.style": style, **changes})


def make_batch(model, texts=TEXTS, seconds=SECONDS):
    target = TargetTokenizer(model.tokenizer, model.prompt.end_id)
    examples = [
        Example(i, f"u{i}", t, s, model.encoder.featurizer(noise(s, seed=i)), target(t)) for i, (t, s) in enumerate(zip(texts, seconds))
    ]
    return collate(examples)


def squash(text: str) -> str:
    """Text without whitespace: the tiny tokenizers add SentencePiece-style spaces after control tokens."""
    return "".join(text.split())


@pytest.fixture(params=CASES, ids=[f"{f}-{s}" for f, s in CASES])
def case(request, tiny_config, family_models):
    family, style = request.param
    return family, style, build_model(family_config(tiny_config, family_models, family, style)).eval()


def test_targets_end_with_the_family_end_token_and_it_is_in_the_loss(case) -> None:
    family, style, model = case
    model.use_prefix_cache = False  # the full rows' layout; tests/test_prefix_cache.py shows the cache changes nothing
    end_id = model.tokenizer.convert_tokens_to_ids(END_TOKEN[family, style])
    assert model.prompt.end_id == end_id
    batch = make_batch(model)
    assert all(row[m - 1].item() == end_id for row, m in zip(batch.targets, batch.target_lengths.tolist()))
    # Recompute the loss from full logits over every target position, the end token included.
    seen = []
    handle = model.llm.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw), with_kwargs=True)
    loss = model(batch)
    handle.remove()
    logits = model.llm(inputs_embeds=seen[0]["inputs_embeds"], attention_mask=seen[0]["attention_mask"],
                       position_ids=seen[0]["position_ids"]).logits  # (B, L, V)
    width = logits.shape[1]
    terms = [
        torch.nn.functional.cross_entropy(logits[i, width - m + j - 1], batch.targets[i, j])
        for i, m in enumerate(batch.target_lengths.tolist()) for j in range(m)
    ]
    torch.testing.assert_close(loss, torch.stack(terms).mean(), atol=1e-5, rtol=1e-5)


def test_bos_leads_the_prompt_exactly_when_the_family_uses_one(case) -> None:
    family, _, model = case
    tok = model.tokenizer
    prompt = [*model.prompt.prefix, *model.prompt.suffix]
    if BOS[family] is None:
        assert tok.bos_token_id is None or tok.bos_token_id not in prompt  # GPT-2's bos is its eos: never in the prompt
    else:
        bos = tok.convert_tokens_to_ids(BOS[family])
        assert prompt[0] == bos and prompt.count(bos) == 1  # the template's BOS and the tokenizer's are one


def test_prompt_is_the_same_in_training_and_generation(case) -> None:
    _, _, model = case
    model.use_prefix_cache = False  # the full rows' layout; tests/test_prefix_cache.py shows the cache changes nothing
    batch = make_batch(model)
    seen = []
    handle = model.llm.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["inputs_embeds"].clone()) if kw.get("inputs_embeds") is not None else None, with_kwargs=True
    )
    model(batch)
    model.generate(batch)
    handle.remove()
    train, gen = seen[0], seen[1]
    prompt_lengths = len(model.prompt.prefix) + len(model.prompt.suffix) + model.encode_speech(batch.features, batch.feature_lengths)[1]
    for i, m in enumerate(batch.target_lengths.tolist()):
        n = int(prompt_lengths[i])
        torch.testing.assert_close(train[i, train.shape[1] - m - n : train.shape[1] - m], gen[i, -n:], atol=1e-6, rtol=0)


def test_connector_width_is_the_llm_hidden_size(case) -> None:
    family, _, model = case
    batch = make_batch(model)
    speech, _ = model.encode_speech(batch.features, batch.feature_lengths)
    assert speech.shape[-1] == hidden_size(model.llm) == model.llm.config.hidden_size
    if family == "gemma3":  # as in gemma-3-1b, the attention width is not the model width
        config = model.llm.config
        assert config.num_attention_heads * config.head_dim != config.hidden_size


def test_text_embeddings_are_what_the_llm_computes_from_ids(case) -> None:
    """Gemma scales its input embeddings; the prompt must get that scaling as input_ids would."""
    _, _, model = case
    ids = torch.tensor([model.prompt.prefix])
    from_ids = model.llm(input_ids=ids).logits
    from_embeds = model.llm(inputs_embeds=model.llm.get_input_embeddings()(ids)).logits
    torch.testing.assert_close(from_embeds, from_ids)


@pytest.mark.parametrize("family", [f for f in FAMILIES if testing.TOKENIZER_FAMILIES[f].get("chat_template")])
def test_chat_prompt_wraps_the_speech_in_a_user_turn(family, tiny_config, family_models) -> None:
    model = build_model(family_config(tiny_config, family_models, family, "chat"))
    prefix, suffix = (squash(model.tokenizer.decode(list(ids), skip_special_tokens=False)) for ids in (model.prompt.prefix, model.prompt.suffix))
    assert prefix.endswith(USER_TURN[family] + squash(tiny_config.prompt.prefix))
    assert suffix.startswith(squash(tiny_config.prompt.suffix) + END_TOKEN[family, "chat"])
    assert ASSISTANT_TURN[family] in suffix
    if family == "qwen3":  # thinking disabled: the template's empty think block closes the prompt
        assert suffix.endswith("<think></think>")


def test_chat_style_without_a_chat_template_is_a_one_line_error(tiny_config, family_models) -> None:
    with pytest.raises(MacasrError, match='style = "chat" needs a tokenizer with a chat template') as info:
        build_model(family_config(tiny_config, family_models, "gpt2", "chat"))
    assert "\n" not in str(info.value)


def test_chat_end_token_falls_back_to_eos_when_the_template_writes_no_control_token(family_models) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(family_models["llama3"])
    tok.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + eos_token }}{% endfor %}"
    assert chat_end_token_id(tok) == tok.eos_token_id  # the template itself ends turns with eos
    tok.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n\\n' }}{% endfor %}"
    assert chat_end_token_id(tok) == tok.eos_token_id  # plain text after the reply: eos ends it


@pytest.mark.parametrize(("family", "style"), CASES, ids=[f"{f}-{s}" for f, s in CASES])
def test_a_trained_model_stops_at_the_terminator(family, style, tiny_config, family_models) -> None:
    """Fit one clip; decoding must then give exactly its transcript and stop on the end token."""
    torch.manual_seed(0)
    model = build_model(family_config(tiny_config, family_models, family, style, **{"model.llm.train": True})).train()
    batch = make_batch(model, ["hello world"], [1.0])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(150):  # 25-45 steps on a tiny model
        opt.zero_grad()
        loss = model(batch)
        if loss.item() < 0.05:
            break
        loss.backward()
        opt.step()
    model.eval()
    speech, lengths = model.encode_speech(batch.features, batch.feature_lengths)
    embeds, mask, positions = model._layout(speech, lengths)
    cap = 20
    tokens = greedy_search(model.llm, embeds, mask, positions, [cap], model.prompt.end_id)[0]
    expected = batch.targets[0, : int(batch.target_lengths[0]) - 1].tolist()
    assert tokens == expected and len(tokens) < cap  # ended by the end token, not by the cap
    assert model.generate(batch) == ["hello world"]
