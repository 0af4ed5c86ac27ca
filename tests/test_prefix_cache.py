"""The prompt prefix's key/value cache: the same loss, gradients and transcripts as without it."""

from __future__ import annotations

import copy

import pytest
import torch

from macasr.config import replace
from macasr.model.build import build_model
from macasr.model.decoding import DecodingOptions, beam_search, greedy_hypotheses
from test_llm_families import CASES, family_config, family_models, make_batch  # noqa: F401 - family_models is a fixture

TEXTS = ["the cat sat on the mat", "hello world", "seven green apples"]
SECONDS = [1.3, 0.6, 2.2]  # rows of different lengths: padding between the cached prefix and the speech


def loss_and_grads(model, batch, cached: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.use_prefix_cache = cached
    model.zero_grad(set_to_none=True)
    loss = model(batch)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def assert_same_loss_and_grads(model, batch) -> None:
    loss_off, grads_off = loss_and_grads(model, batch, cached=False)
    loss_on, grads_on = loss_and_grads(model, batch, cached=True)
    torch.testing.assert_close(loss_on, loss_off, atol=1e-5, rtol=1e-5)
    assert grads_on.keys() == grads_off.keys() and grads_on
    for name in grads_off:
        torch.testing.assert_close(grads_on[name], grads_off[name], atol=1e-5, rtol=1e-4, msg=name)


def count_llm_tokens(model) -> tuple[list[int], object]:
    """Record how many positions each LLM call with inputs_embeds runs on (prefill calls)."""
    seen: list[int] = []
    handle = model.llm.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["inputs_embeds"].shape[1]) if kw.get("inputs_embeds") is not None else None,
        with_kwargs=True,
    )
    return seen, handle


@pytest.mark.parametrize("family, style", [c for c in CASES if c[0] != "gemma3"], ids=lambda v: v)
def test_loss_and_gradients_equal_with_and_without_the_prefix_cache(family, style, tiny_config, family_models) -> None:
    model = build_model(family_config(tiny_config, family_models, family, style)).train()
    batch = make_batch(model, TEXTS, SECONDS)
    assert model.cached_prefix(len(TEXTS)) is not None  # the cache is in use for this family
    assert_same_loss_and_grads(model, batch)


def test_the_llm_runs_the_prefix_once_and_then_only_the_rest(model) -> None:
    from test_model import make_batch as tiny_batch

    model.train()
    batch = tiny_batch(model)
    prefix = len(model.prompt.prefix)
    model.use_prefix_cache = False
    seen, handle = count_llm_tokens(model)
    expected = model(batch)
    full = seen.pop()
    model.use_prefix_cache = True
    losses = [model(batch), model(batch)]  # the second reuses the states the first computed, unchanged by it
    handle.remove()
    assert seen == [prefix, full - prefix, full - prefix]  # the prefix alone once, then rows without it
    for loss in losses:
        torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_the_encoder_gets_the_same_gradients_when_it_trains(tiny_config) -> None:
    model = build_model(replace(tiny_config, **{"model.encoder.train": True})).train()
    batch = make_batch(model, TEXTS, SECONDS)
    assert model.cached_prefix(1) is not None
    assert any(name.startswith("encoder.") for name, p in model.named_parameters() if p.requires_grad)
    assert_same_loss_and_grads(model, batch)


def test_not_used_when_an_llm_weight_trains_or_for_sliding_window_attention(tiny_config, family_models) -> None:
    lora = build_model(replace(tiny_config, **{"model.llm.lora.enabled": True})).train()
    trained = build_model(replace(tiny_config, **{"model.llm.train": True})).train()
    gemma = build_model(family_config(tiny_config, family_models, "gemma3", "plain"))  # sliding-window layers
    assert lora.cached_prefix(2) is None and trained.cached_prefix(2) is None and gemma.cached_prefix(2) is None
    frozen = build_model(tiny_config)
    frozen.llm.train()  # dropout could make the prefix's states differ from call to call
    assert frozen.cached_prefix(2) is None
    frozen.llm.eval()
    assert frozen.cached_prefix(2) is not None


def test_states_are_recomputed_when_the_llm_weights_or_dtype_change(model) -> None:
    from test_model import make_batch as tiny_batch

    batch = tiny_batch(model)
    before = model(batch)
    changed = copy.deepcopy(model.llm.state_dict())
    with torch.no_grad():
        for value in changed.values():
            value.mul_(1.1)
    model.llm.load_state_dict(changed)  # in place: the cached states are now stale
    model.use_prefix_cache = False
    expected = model(batch)
    model.use_prefix_cache = True
    torch.testing.assert_close(model(batch), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(before, expected)
    model.to(torch.float64)
    assert model.cached_prefix(1).layers[0].keys.dtype == torch.float64
    model.to(torch.float32)


def test_states_made_in_inference_mode_serve_training(model) -> None:
    from test_model import make_batch as tiny_batch

    batch = tiny_batch(model)
    with torch.inference_mode():
        model.generate(batch)  # computes the prefix's states first, as a validation before any step would
    model.train()
    model(batch).backward()  # inference tensors in the cache would fail here: they cannot be saved for backward
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def hypotheses(model, batch, beams: int, cached: bool) -> list:
    """Each clip's best hypothesis (tokens, score, why it stopped), decoded as `generate` does."""
    model.use_prefix_cache = cached
    with torch.no_grad():
        speech, lengths = model.encode_speech(batch.features, batch.feature_lengths)
        past = model.cached_prefix(len(speech))
        assert (past is not None) == cached
        embeds, mask, positions = model._layout(speech, lengths, cached=past)
        caps = [12] * len(speech)
        if beams > 1:
            return beam_search(model.llm, embeds, mask, positions, caps, model.prompt.end_id, beams, prefix=past)
        return greedy_hypotheses(model.llm, embeds, mask, positions, caps, model.prompt.end_id, prefix=past)


@pytest.mark.parametrize("beams", [1, 3])
@pytest.mark.parametrize("family, style", [("qwen3", "plain"), ("qwen3", "chat"), ("llama3", "chat"), ("gpt2", "plain")])
def test_decoding_gives_the_same_hypotheses_and_transcripts(family, style, beams, tiny_config, family_models) -> None:
    model = build_model(family_config(tiny_config, family_models, family, style)).eval()
    batch = make_batch(model, TEXTS, SECONDS)
    expected, got = hypotheses(model, batch, beams, cached=False), hypotheses(model, batch, beams, cached=True)
    assert [h.tokens for h in got] == [h.tokens for h in expected] and any(h.tokens for h in got)
    assert [h.stop for h in got] == [h.stop for h in expected]
    torch.testing.assert_close(torch.tensor([h.score for h in got]), torch.tensor([h.score for h in expected]), atol=1e-4, rtol=1e-5)
    options = DecodingOptions(num_beams=beams)
    model.use_prefix_cache = False
    seen, handle = count_llm_tokens(model)
    texts = model.generate_with_stops(batch, options)
    model.use_prefix_cache = True
    assert model.generate_with_stops(batch, options) == texts
    handle.remove()
    prefix = len(model.prompt.prefix)
    assert seen[1:] == [seen[0] - prefix]  # generate used the cache (its states were computed above)


def test_the_config_switch_turns_it_off(tiny_config) -> None:
    assert build_model(tiny_config).cached_prefix(2) is not None
    assert build_model(replace(tiny_config, **{"train.prefix_cache": False})).cached_prefix(2) is None


def test_bf16_autocast_states_are_kept_apart_from_fp32_ones(tiny_config) -> None:
    from macasr.model.build import autocast

    model = build_model(tiny_config, "cpu", "bf16").train()
    batch = make_batch(model, TEXTS, SECONDS)
    with autocast(torch.device("cpu"), "bf16"):
        assert model.cached_prefix(1).layers[0].keys.dtype == torch.bfloat16
        loss_off, _ = loss_and_grads(model, batch, cached=False)
        loss_on, _ = loss_and_grads(model, batch, cached=True)
    torch.testing.assert_close(loss_on, loss_off, atol=2e-2, rtol=2e-2)  # bf16 rounding: the prefix ran alone, not in a batch
    model.llm.float()  # the same weights in fp32, outside autocast: new states, not the bf16 ones
    assert model.cached_prefix(1).layers[0].keys.dtype == torch.float32


def test_weights_made_in_inference_mode_decode_with_the_cache(tiny_config) -> None:
    model = build_model(tiny_config).eval()
    batch = make_batch(model, TEXTS, SECONDS)
    mlp = model.llm.model.layers[0].mlp
    with torch.inference_mode():
        mlp.down_proj.weight = torch.nn.Parameter(mlp.down_proj.weight.clone(), requires_grad=False)  # no version counter
        expected = hypotheses(model, batch, 1, cached=False)
        got = hypotheses(model, batch, 1, cached=True)
    assert [h.tokens for h in got] == [h.tokens for h in expected]


def count_computes(model, monkeypatch) -> list[int]:
    """Record the prefix length each time `model`'s prefix cache computes its states."""
    computed: list[int] = []
    compute = type(model._prefix_cache)._compute

    def counting(self, llm, prefix):
        computed.append(len(prefix))
        return compute(self, llm, prefix)

    monkeypatch.setattr(type(model._prefix_cache), "_compute", counting)
    return computed


@pytest.mark.parametrize("beams", [1, 3])
def test_the_prefix_is_computed_once_for_every_batch_of_a_loaded_model(beams, tiny_config, monkeypatch) -> None:
    model = build_model(tiny_config).eval()
    computed = count_computes(model, monkeypatch)
    batches = [make_batch(model, TEXTS, SECONDS), make_batch(model, TEXTS[:1], SECONDS[:1]), make_batch(model, TEXTS[1:], SECONDS[1:])]
    options = DecodingOptions(num_beams=beams)
    with torch.inference_mode():  # as eval and transcribe decode
        got = [model.generate_with_stops(batch, options) for batch in batches]
    assert computed == [len(model.prompt.prefix)]  # the first batch computed the states; the others reused them
    model.use_prefix_cache = False
    assert [model.generate_with_stops(batch, options) for batch in batches] == got
    assert computed == [len(model.prompt.prefix)]


@pytest.mark.parametrize("trains", ["model.llm.lora.enabled", "model.llm.train"])
def test_a_model_whose_llm_trains_decodes_with_the_cache_and_never_with_stale_states(trains, tiny_config, monkeypatch) -> None:
    model = build_model(replace(tiny_config, **{trains: True}))
    computed = count_computes(model, monkeypatch)
    batch = make_batch(model, TEXTS, SECONDS)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for step in range(2):
        model.eval()  # validation, as the engine runs it between steps: no gradients, so the cache serves
        got, expected = hypotheses(model, batch, 1, cached=True), hypotheses(model, batch, 1, cached=False)
        assert [h.tokens for h in got] == [h.tokens for h in expected]
        torch.testing.assert_close(torch.tensor([h.score for h in got]), torch.tensor([h.score for h in expected]), atol=1e-4, rtol=1e-5)
        assert len(computed) == step + 1  # the states of the weights as they are now, never the last step's
        model.train()
        assert model.cached_prefix(len(TEXTS)) is None  # a training forward runs the prefix in the rows: gradients reach the LLM
        model(batch).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert model.llm.training is True


def test_a_replaced_llm_weight_invalidates_the_states(model) -> None:
    from test_model import make_batch as tiny_batch

    batch = tiny_batch(model)
    attention = model.llm.model.layers[0].self_attn
    old = attention.v_proj.weight  # the prefix's values in the first layer (Qwen3 normalizes its keys: k_proj's scale drops out)
    with torch.no_grad():
        old.mul_(1.0)  # its version counter is now at least 1; its values are unchanged
        model(batch)  # the states of the current weights
        new = torch.nn.Parameter(old.detach().clone(), requires_grad=False)
        new.mul_(1.5)
        while new._version < old._version:  # the same version count as the weight it replaces: only its storage differs
            new.mul_(1.0)
        assert new._version == old._version
        attention.v_proj.weight = new
        model.use_prefix_cache = False
        expected = model(batch)
        model.use_prefix_cache = True
        torch.testing.assert_close(model(batch), expected, atol=1e-5, rtol=1e-5)
