"""SpeechLLM behaviour users rely on: what the loss covers, prompts, batching, training, reloading."""

from __future__ import annotations

import pytest
import torch

from conftest import noise
from macasr import testing
from macasr.data.collate import Example, collate
from macasr.model.build import build_model
from macasr.model.decoding import DecodingOptions, greedy_search
from macasr.model.llm import TargetTokenizer
from macasr.train import checkpoint

TEXTS = ["the cat sat on the mat", "hello world", "seven green apples"]
SECONDS = [1.3, 0.6, 2.2]


def make_batch(model, texts=TEXTS, seconds=SECONDS, offset=0):
    target = TargetTokenizer(model.tokenizer, model.prompt.end_id)
    examples = [
        Example(i, f"u{i}", t, s, model.encoder.featurizer(noise(s, seed=offset + i)), target(t))
        for i, (t, s) in enumerate(zip(texts, seconds))
    ]
    return collate(examples)


def capture_llm_inputs(model):
    """Record inputs_embeds of every LLM call (prefill calls only carry them)."""
    seen = []
    handle = model.llm.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["inputs_embeds"].detach().clone()) if kw.get("inputs_embeds") is not None else None,
        with_kwargs=True,
    )
    return seen, handle


def test_targets_end_with_the_end_token_even_when_eos_is_pad(model) -> None:
    assert model.tokenizer.pad_token_id == model.tokenizer.eos_token_id  # the risky case
    batch = make_batch(model)
    for row, length in zip(batch.targets, batch.target_lengths):
        assert row[length - 1].item() == model.prompt.end_id


def test_loss_covers_only_target_and_end_tokens(model) -> None:
    model.use_prefix_cache = False  # the full rows' layout; tests/test_prefix_cache.py shows the cache changes nothing
    batch = make_batch(model)
    loss = model(batch)
    seen, handle = capture_llm_inputs(model)
    model(batch)
    handle.remove()
    embeds = seen[0]
    # Recompute: full logits, then cross-entropy over exactly the target positions (incl. end).
    speech, lengths = model.encode_speech(batch.features, batch.feature_lengths)
    _, mask, positions = model._layout(speech, lengths, model.llm.get_input_embeddings()(batch.targets), batch.target_lengths)
    logits = model.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
    width = embeds.shape[1]
    terms = []
    for i, m in enumerate(batch.target_lengths.tolist()):
        for j in range(m):  # token j of row i sits at column width - m + j, predicted one column earlier
            terms.append(torch.nn.functional.cross_entropy(logits[i, width - m + j - 1], batch.targets[i, j]))
    assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-5)
    assert len(terms) == int(batch.target_lengths.sum())


def test_prompt_tokens_are_identical_in_training_and_generation(model) -> None:
    model.use_prefix_cache = False  # the full rows' layout; tests/test_prefix_cache.py shows the cache changes nothing
    batch = make_batch(model)
    seen, handle = capture_llm_inputs(model)
    model(batch)
    model.generate(batch)
    handle.remove()
    train_embeds, gen_embeds = seen[0], seen[1]
    for i, m in enumerate(batch.target_lengths.tolist()):
        prompt_len = gen_embeds.shape[1] - int((gen_embeds[i].abs().sum(-1) == 0).sum())
        train_row = train_embeds[i, train_embeds.shape[1] - m - prompt_len : train_embeds.shape[1] - m]
        assert torch.allclose(train_row, gen_embeds[i, -prompt_len:], atol=1e-6)


def test_layout_places_prompt_speech_and_target_left_padded(model) -> None:
    batch = make_batch(model)
    embed = model.llm.get_input_embeddings()
    speech, lengths = model.encode_speech(batch.features, batch.feature_lengths)
    targets = embed(batch.targets)
    embeds, mask, positions = model._layout(speech, lengths, targets, batch.target_lengths)
    for i in range(len(batch)):
        n, m = int(lengths[i]), int(batch.target_lengths[i])
        row = torch.cat([embed(model.prefix_ids), speech[i, :n], embed(model.suffix_ids), targets[i, :m]])
        pad = embeds.shape[1] - row.shape[0]
        torch.testing.assert_close(embeds[i, pad:], row)
        assert embeds[i, :pad].abs().sum() == 0 and mask[i].tolist() == [0] * pad + [1] * row.shape[0]
        assert positions[i, pad:].tolist() == list(range(row.shape[0]))


def test_prompt_strings_become_the_configured_tokens(model) -> None:
    tok = model.tokenizer
    assert list(model.prompt.prefix) == tok("Transcribe the following audio to text.\n\nAudio:", add_special_tokens=False).input_ids
    assert list(model.prompt.suffix) == tok("\n\nTranscription:", add_special_tokens=False).input_ids


def test_clip_frames_do_not_depend_on_the_batch(model) -> None:
    batch = make_batch(model)
    frames, lengths = model.encoder(batch.features, batch.feature_lengths)
    for i in range(len(batch)):
        n = int(batch.feature_lengths[i])
        alone, alone_len = model.encoder(batch.features[i : i + 1, :, :n], batch.feature_lengths[i : i + 1])
        assert alone_len.item() == lengths[i].item()
        torch.testing.assert_close(frames[i, : lengths[i]], alone[0], atol=1e-5, rtol=1e-4)
        assert frames[i, lengths[i] :].abs().sum() == 0


def test_long_clips_are_encoded_window_by_window_and_joined(model) -> None:
    wave = noise(65.0)
    feats = model.encoder.featurizer(wave)
    frames, lengths = model.encoder(feats[None], torch.tensor([feats.shape[-1]]))
    assert lengths.item() == frames.shape[1] == 3250  # 65 s at 50 Hz, nothing cut
    window, _ = model.encoder(feats[None, :, :3000], torch.tensor([3000]))
    torch.testing.assert_close(frames[0, :1500], window[0], atol=1e-5, rtol=1e-4)


def test_batched_generation_equals_one_by_one(model) -> None:
    batch = make_batch(model)
    batched = model.generate(batch)
    singles = [model.generate(collate([ex]))[0] for ex in _examples(model)]
    assert batched == singles


def _examples(model):
    target = TargetTokenizer(model.tokenizer, model.prompt.end_id)
    return [Example(i, f"u{i}", t, s, model.encoder.featurizer(noise(s, seed=i)), target(t)) for i, (t, s) in enumerate(zip(TEXTS, SECONDS))]


def test_new_tokens_are_capped_per_clip(model) -> None:
    assert DecodingOptions(max_tokens_per_second=2.0, max_tokens_base=1).max_new_tokens([1.0, 2.5]) == [3, 6]
    batch = make_batch(model)
    speech, lengths = model.encode_speech(batch.features, batch.feature_lengths)
    embeds, mask, positions = model._layout(speech, lengths)
    tokens = greedy_search(model.llm, embeds, mask, positions, [3, 1, 5], model.prompt.end_id)
    assert [len(t) for t in tokens] <= [3, 1, 5] and all(len(t) <= c for t, c in zip(tokens, [3, 1, 5]))
    assert len(tokens[1]) <= 1 and max(map(len, tokens)) > 0


def test_a_few_training_steps_lower_the_loss(tiny_config) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config).train()
    assert all(not p.requires_grad for p in model.llm.parameters())
    assert all(not p.requires_grad for p in model.encoder.parameters())
    batch = make_batch(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    first = model(batch).item()
    for _ in range(15):
        opt.zero_grad()
        model(batch).backward()
        opt.step()
    # A random tiny LLM has tiny frozen embeddings, so its logits can only move a little.
    assert model(batch).item() < first - 0.05


def test_checkpoint_reloads_to_identical_outputs(tiny_config, tmp_path) -> None:
    model = build_model(tiny_config)
    testing.perturb_trainable(model)
    model.eval()
    path = checkpoint.save_checkpoint(tmp_path / "best.pt", checkpoint.model_payload(model, tiny_config, step=1))
    state = torch.load(path, weights_only=True)
    assert set(state["model"]) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(k.startswith(("llm.", "encoder.")) for k in state["model"])  # frozen parts are not copied
    restored = checkpoint.restore_model(path, "cpu")
    batch = make_batch(model)
    assert restored.model.generate(batch) == model.generate(batch)
    torch.testing.assert_close(restored.model(batch), model(batch))
