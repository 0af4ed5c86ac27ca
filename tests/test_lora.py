"""LoRA is really applied: only adapters (and the connector) train, base weights never move,
adapters survive a checkpoint, and a LoRA config that cannot be honoured is refused."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console
from torch import nn

from macasr import config as config_module, testing
from macasr.errors import ConfigError, MacasrError
from macasr.model.build import build_model, parameter_counts
from macasr.model.decoding import DecodingOptions
from macasr.model.lora import lora_layers
from macasr.train import checkpoint
from macasr.train.run import parameter_table
from test_model import TEXTS, make_batch

RANK = 4
SECONDS = [0.8, 0.5, 1.0]  # short clips keep the file fast on 2 shared cores


def with_lora(cfg, encoder: bool = False, **changes):
    lora = {"model.llm.lora.enabled": True, "model.llm.lora.r": RANK}
    if encoder:
        lora |= {"model.encoder.lora.enabled": True, "model.encoder.lora.r": RANK}
    return config_module.replace(cfg, **lora, **changes)


def expected_adapters(module: nn.Module, targets: list[str], r: int) -> int:
    """r * (in + out) per targeted Linear, read from a model without adapters."""
    return sum(r * (m.in_features + m.out_features) for name, m in module.named_modules()
               if isinstance(m, nn.Linear) and name.rpartition(".")[2] in targets)


def frozen_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if not p.requires_grad}


def adapter_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if "lora_" in n}


def test_only_the_connector_and_the_expected_adapters_train(tiny_config) -> None:
    plain = build_model(tiny_config)
    cfg = with_lora(tiny_config, encoder=True)
    model = build_model(cfg, precision="bf16")
    assert type(model.llm) is type(plain.llm)  # adapters injected, the HF class and its forward kept
    llm_expected = expected_adapters(plain.llm, cfg.model.llm.lora.target_modules, RANK)
    enc_expected = expected_adapters(plain.encoder, cfg.model.encoder.lora.target_modules, RANK)
    connector = sum(p.numel() for p in model.connector.parameters())
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == connector + llm_expected + enc_expected
    assert all(n.startswith("connector.") or "lora_" in n for n in trainable)
    assert {p.dtype for p in trainable.values()} == {torch.float32}  # adapters fp32 over a bf16 base
    assert model.llm.get_input_embeddings().weight.dtype == torch.bfloat16
    counts = parameter_counts(model)
    assert (counts["llm"].trainable, counts["llm"].adapters) == (llm_expected, llm_expected)
    assert counts["encoder"].adapters == enc_expected and counts["connector"].adapters == 0
    console = Console(file=io.StringIO(), width=120)
    console.print(parameter_table(model))
    table = console.file.getvalue()
    assert "LoRA adapters" in table and f"{llm_expected:,}" in table


def test_training_moves_adapters_and_never_the_base_weights(tiny_config) -> None:
    model = build_model(with_lora(tiny_config, encoder=True)).train()
    assert model.llm.training and model.encoder.training  # adapters make both parts trainable
    base = {part: frozen_state(getattr(model, part)) for part in ("llm", "encoder")}
    adapters = adapter_state(model)
    batch = make_batch(model, TEXTS, SECONDS)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    first = model(batch).item()
    for _ in range(8):
        opt.zero_grad()
        model(batch).backward()
        opt.step()
    assert model(batch).item() < first - 0.05
    for part, before in base.items():
        after = frozen_state(getattr(model, part))
        assert after.keys() == before.keys()
        assert all(torch.equal(after[n], before[n]) for n in before), f"a frozen {part} weight moved"
    moved = adapter_state(model)
    assert {n for n in adapters if torch.equal(adapters[n], moved[n])} == set()  # every A and B learned
    model.eval()
    with torch.no_grad():
        with_adapters = model(batch)
        for layer in lora_layers(model):
            layer.enable_adapters(False)
        without = model(batch)
    assert not torch.allclose(with_adapters, without)  # the adapters are in the forward path


def test_adapter_dropout_acts_only_in_training_mode(tiny_config) -> None:
    model = build_model(with_lora(tiny_config, **{"model.llm.lora.dropout": 0.5, "model.connector.dropout": 0.0}))
    with torch.no_grad():
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # B starts at zero, which would hide the adapters' input dropout
    batch = make_batch(model, TEXTS, SECONDS)
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(batch), model(batch))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(batch), model(batch))


def test_adapters_round_trip_through_a_checkpoint(tiny_config, tmp_path) -> None:
    cfg = with_lora(tiny_config, encoder=True)
    model = build_model(cfg)
    testing.perturb_trainable(model)
    model.eval()
    path = checkpoint.save_checkpoint(tmp_path / "best.pt", checkpoint.model_payload(model, cfg, step=1))
    stored = torch.load(path, weights_only=True)["model"]
    assert any(k.startswith("llm.") and "lora_" in k for k in stored)
    assert any(k.startswith("encoder.") and "lora_" in k for k in stored)
    assert not any("base_layer" in k for k in stored)  # frozen weights are reloaded, not copied
    restored = checkpoint.restore_model(path, "cpu")
    assert restored.config.model.llm.lora == cfg.model.llm.lora
    batch = make_batch(model, TEXTS, SECONDS)
    short = DecodingOptions(max_tokens_per_second=2.0, max_tokens_base=8)  # a few tokens keep the test fast
    assert restored.model.generate(batch, short) == model.generate(batch, short)
    torch.testing.assert_close(restored.model(batch), model(batch))


@pytest.mark.parametrize("targets", [["qproj"], ["q_proj", "v_prj"], ["self_attn"]])
def test_a_target_that_matches_no_linear_layer_is_a_one_line_error(tiny_config, targets) -> None:
    with pytest.raises(MacasrError) as info:
        build_model(with_lora(tiny_config, **{"model.llm.lora.target_modules": targets}))
    message = str(info.value)
    assert "\n" not in message and message.startswith("[model.llm.lora] target_modules:")
    assert repr(targets[-1]) in message and "q_proj" in message  # names the culprit and real layers


@pytest.mark.parametrize("part", ["llm", "encoder"])
def test_lora_and_full_fine_tuning_of_one_part_are_a_config_error(tiny_config, part) -> None:
    table = "[model.encoder]\nname = \"whisper\"" if part == "encoder" else "[model.llm]"
    text = f"{table}\ntrain = true\n\n[model.{part}.lora]\nenabled = true\n"
    with pytest.raises(ConfigError, match=rf"\[model\.{part}\] train: LoRA .* mutually exclusive"):
        config_module.loads(text, "run.toml")
    both = config_module.replace(tiny_config, **{f"model.{part}.train": True, f"model.{part}.lora.enabled": True})
    with pytest.raises(ConfigError, match="mutually exclusive"):  # never a silent full fine-tune
        build_model(both)
