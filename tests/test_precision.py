"""Precision and memory: fp32 master weights under bf16, SDPA, gradient checkpointing, torch.compile."""

from __future__ import annotations

import os

import pytest
import torch

from macasr.config import replace
from macasr.errors import ConfigError
from macasr.model.build import autocast, build_model, resolve_precision
from macasr.train.memory import apply_training_options, compile_connector, enable_gradient_checkpointing
from test_prefix_cache import SECONDS, TEXTS
from test_model import make_batch

TRAINING = {
    "connector only": {},
    "encoder trains": {"model.encoder.train": True},
    "LLM trains": {"model.llm.train": True},
    "LLM LoRA": {"model.llm.lora.enabled": True},
    "encoder LoRA": {"model.encoder.lora.enabled": True},
}


@pytest.mark.parametrize("changes", TRAINING.values(), ids=TRAINING.keys())
def test_bf16_trains_fp32_master_weights_and_loads_frozen_weights_in_bf16(changes, tiny_config) -> None:
    model = build_model(replace(tiny_config, **changes), "cpu", "bf16").train()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    assert trainable and frozen
    assert {p.dtype for p in trainable.values()} == {torch.float32}
    assert {p.dtype for p in frozen.values()} == {torch.bfloat16}
    with autocast(torch.device("cpu"), "bf16"):
        loss = model(make_batch(model, TEXTS, SECONDS))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable.values())


def test_fp32_on_cpu(tiny_config) -> None:
    precision = resolve_precision("auto", torch.device("cpu"))
    assert precision == "fp32"
    model = build_model(tiny_config, "cpu", precision)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_picks_bf16_only_where_the_gpu_computes_it_natively(native, expected, monkeypatch) -> None:
    # torch counts emulated bf16 (V100, T4: a fraction of their fp32 speed) as supported unless told not to.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    assert resolve_precision("auto", torch.device("cuda")) == expected
    assert resolve_precision("fp32", torch.device("cuda")) == "fp32"


def test_attention_runs_on_sdpa(model) -> None:
    assert model.llm.config._attn_implementation == "sdpa"
    assert model.encoder.model.config._attn_implementation == "sdpa"


def test_gradient_checkpointing_of_a_frozen_llm_is_refused_in_one_line(tiny_config) -> None:
    problems = replace(tiny_config, **{"train.gradient_checkpointing": True}).validate()
    assert len(problems) == 1 and problems[0].startswith("[train] gradient_checkpointing:") and "\n" not in problems[0]
    for changes in ({"model.llm.lora.enabled": True}, {"model.llm.train": True}):
        assert replace(tiny_config, **{"train.gradient_checkpointing": True, **changes}).validate() == []


def test_gradient_checkpointing_of_an_llm_without_support_is_a_config_error() -> None:
    class NoSupport(torch.nn.Module):
        supports_gradient_checkpointing = False

    with pytest.raises(ConfigError, match=r"\[train\] gradient_checkpointing: NoSupport does not support"):
        enable_gradient_checkpointing(NoSupport())


def loss_grads_and_mlp_calls(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Loss, trainable gradients, and how often the LLM's first MLP ran in forward + backward."""
    mlp, calls = model.llm.model.layers[0].mlp, []
    forward = mlp.forward

    def counted(*args, **kwargs):  # forward hooks do not fire on a checkpoint's recompute; forward itself runs
        calls.append(1)
        return forward(*args, **kwargs)

    mlp.forward = counted
    model.zero_grad(set_to_none=True)
    loss = model(batch)
    loss.backward()
    del mlp.forward
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, len(calls)


@pytest.mark.parametrize("changes", [{"model.llm.lora.enabled": True, "model.llm.lora.dropout": 0.0}, {"model.llm.train": True}],
                         ids=["lora", "llm-trains"])
def test_gradient_checkpointing_recomputes_the_llm_and_gives_the_same_loss_and_gradients(changes, tiny_config) -> None:
    cfg = replace(tiny_config, **{**changes, "train.gradient_checkpointing": True})
    model = build_model(cfg).train()
    batch = make_batch(model, TEXTS, SECONDS)
    loss, grads, calls = loss_grads_and_mlp_calls(model, batch)
    assert apply_training_options(model, cfg) == ["gradient checkpointing of the LLM"]
    loss_ckpt, grads_ckpt, calls_ckpt = loss_grads_and_mlp_calls(model, batch)
    assert (calls, calls_ckpt) == (1, 2)  # the layer ran again in the backward pass
    torch.testing.assert_close(loss_ckpt, loss)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, msg=name)


def test_compile_connector_compiles_in_place_and_keeps_checkpoint_keys(model) -> None:
    keys = list(model.state_dict())
    compile_connector(model)
    assert model.connector._compiled_call_impl is not None  # calls go through torch.compile
    assert list(model.state_dict()) == keys  # checkpoints load into a compiled or a plain model alike


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MACASR_SLOW_TESTS"), reason="a real inductor compile (75 s on 2 shared cores); MACASR_SLOW_TESTS=1 runs it")
def test_compiled_connector_gives_the_same_loss_and_gradients(tiny_config) -> None:
    """One real compile (inductor, with a C compiler on CPU)."""
    model = build_model(tiny_config).train()
    batch = make_batch(model, TEXTS, SECONDS)
    loss = model(batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    assert apply_training_options(model, replace(tiny_config, **{"train.compile_connector": True})) == ["torch.compile of the connector"]
    compiled = model(batch)
    compiled.backward()
    torch.testing.assert_close(compiled, loss)
    for name, grad in grads.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, msg=name)


def test_a_training_run_applies_gradient_checkpointing_and_says_so(tiny_config, corpus, tmp_path) -> None:
    import io

    from rich.console import Console

    from macasr.train.run import train
    from test_engine import run_config

    cfg = run_config(tiny_config, corpus, tmp_path, **{"model.llm.lora.enabled": True, "train.gradient_checkpointing": True})
    console = Console(file=io.StringIO(), width=400)
    result = train(cfg, console)
    assert result.steps == 1 and (result.run_dir / "last.pt").is_file()
    assert "precision fp32, gradient checkpointing of the LLM;" in console.file.getvalue()
