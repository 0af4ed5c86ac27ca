"""`macasr plan` sizes configs from architecture configs alone: its counts match published sizes
and really built models, its FLOPs match torch's counter, its activation formula tracks the
tensors autograd really keeps, and it runs offline on every shipped preset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from conftest import SENTENCES
from macasr import config as config_module, hub_configs, testing
from macasr.cli import app
from macasr.model.build import build_model, parameter_counts
from macasr.model.connectors import QFormerConnectorConfig, TransformerConnectorConfig
from macasr.model.lora import LoraConfig, apply_lora
from macasr.plan import (
    build_meta_model, build_plan, encoder_activation_elements, encoder_flops, llm_activation_elements, llm_flops,
    llm_shape,
)

runner = CliRunner()
PRESETS = sorted(Path(__file__).parents[1].joinpath("macasr", "configs").glob("*.toml"))
MAIN, LORA = "whisper-large-v3_qwen3-1.7b", "whisper-large-v3_qwen3-1.7b_lora"


@pytest.fixture(scope="module")
def main_meta():
    return build_meta_model(config_module.load_preset(MAIN))


def test_whisper_large_v3_encoder_is_637m_parameters_and_2_27_teraflops_per_window(main_meta) -> None:
    params = sum(p.numel() for p in main_meta.encoder.parameters())
    assert params == pytest.approx(637e6, rel=5e-3)
    flops = encoder_flops(main_meta.encoder, main_meta.encoder_config, 30.0)
    assert flops == pytest.approx(2.27e12, rel=5e-3)
    # The same count as torch's FlopCounterMode running the encoder on one 30 s window (3000 mel frames).
    mels = main_meta.encoder_config.num_mel_bins
    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        main_meta.encoder(torch.zeros(1, mels, 3000))
    assert flops == pytest.approx(counter.get_total_flops(), rel=1e-6)
    # Clips are encoded at their own length: half a window costs less than half as much (attention).
    assert encoder_flops(main_meta.encoder, main_meta.encoder_config, 15.0) < flops / 2


@pytest.mark.parametrize(("model_id", "expected", "rel"), [
    ("Qwen/Qwen3-1.7B", 1.72e9, 5e-3), ("Qwen/Qwen3-0.6B", 0.596e9, 5e-3), ("google/gemma-3-1b-it", 999_885_952, 0),
])
def test_shipped_llm_configs_have_the_published_sizes(model_id: str, expected: float, rel: float) -> None:
    cfg = config_module.replace(config_module.Config(), **{"model.llm.path": model_id})
    meta = build_meta_model(cfg)
    assert sum(p.numel() for p in meta.llm.parameters()) == pytest.approx(expected, rel=rel)
    assert meta.sources == {"encoder": "shipped", "llm": "shipped"}


@pytest.mark.parametrize("model_id", ["Qwen/Qwen3-0.6B", "google/gemma-3-1b-it"])
def test_llm_prefill_flops_match_torch_flop_counter(model_id: str) -> None:
    meta = build_meta_model(config_module.replace(config_module.Config(), **{"model.llm.path": model_id}))
    tokens = 300  # below Gemma's 512-token window, where masking and skipping cost the same
    width = meta.llm.get_input_embeddings().embedding_dim
    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        meta.llm(inputs_embeds=torch.zeros(1, tokens, width), logits_to_keep=1)
    ours = llm_flops(meta.llm, llm_shape(meta.llm_config), tokens, tokens, 1)
    assert ours == pytest.approx(counter.get_total_flops(), rel=1e-3)


def test_lora_preset_trains_few_parameters_and_counts_r_times_in_plus_out() -> None:
    cfg = config_module.load_preset(LORA)
    plan = build_plan(cfg)
    llm = plan.parts["llm"]
    c = hub_configs.load("Qwen/Qwen3-1.7B")
    h, q, kv = c["hidden_size"], c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    r = cfg.model.llm.lora.r
    per_layer = r * ((h + q) + (h + kv) + (h + kv) + (q + h))  # q_proj, k_proj, v_proj, o_proj
    assert llm.lora == llm.trainable == c["num_hidden_layers"] * per_layer == 6_422_528
    assert plan.to_dict()["total"]["trainable"] == llm.lora + plan.parts["connector"].params
    assert plan.to_dict()["total"]["trainable"] < 0.02 * plan.to_dict()["total"]["params"]
    assert plan.checkpoint_bytes == 4 * plan.to_dict()["total"]["trainable"]
    plain = build_plan(config_module.load_preset(MAIN))
    assert llm.params == plain.parts["llm"].params + llm.lora
    assert plan.memory["activations"] > plain.memory["activations"]  # adapters keep their inputs


def _tiny_variants(cfg):
    small = {"downsample": 2, "dim": 32, "heads": 4}
    return {
        "frozen": cfg,
        "lora": config_module.replace(cfg, **{"model.llm.lora.enabled": True, "model.llm.lora.r": 4,
                                              "model.encoder.lora.enabled": True, "model.encoder.lora.r": 2}),
        "all-trained": config_module.replace(cfg, **{"model.encoder.train": True, "model.llm.train": True}),
        "transformer": config_module.replace(cfg, **{"model.connector": TransformerConnectorConfig(**small)}),
        "qformer": config_module.replace(cfg, **{"model.connector": QFormerConnectorConfig(**small)}),
        "conv1d": config_module.replace(cfg, **{"model.connector.downsampler": "conv1d"}),
    }


@pytest.mark.parametrize("variant", ["frozen", "lora", "all-trained", "transformer", "qformer", "conv1d"])
def test_plan_counts_what_build_model_builds(variant: str, tiny_config, tmp_path: Path) -> None:
    cfg = _tiny_variants(tiny_config)[variant]
    path = config_module.dump(cfg, tmp_path / "tiny.toml")
    result = runner.invoke(app, ["plan", str(path), "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    model = build_model(config_module.load(path))
    for part, counts in parameter_counts(model).items():
        got = plan["parts"][part]
        assert (got["params"], got["trainable"], got["lora"]) == tuple(counts), part
    assert plan["assumptions"]["prompt_tokens_exact"]  # the tiny tokenizer is on disk
    assert plan["assumptions"]["prompt_tokens"] == len(model.prompt.prefix) + len(model.prompt.suffix)
    assert plan["assumptions"]["config_sources"] == {"encoder": "folder", "llm": "folder"}


def _tiny_demo_models(root: Path, preset: config_module.Config) -> None:
    """The demo preset names models `macasr demo` creates; make tiny ones at those paths."""
    from macasr import demo

    tokenizer = testing.train_tokenizer(SENTENCES * 5, vocab_size=150)
    testing.save_tiny_whisper(root / preset.model.encoder.path, d_model=64, heads=4)  # stands in for Whisper tiny.en
    testing.save_tiny_qwen3(root / preset.model.llm.path, tokenizer, hidden=demo.LLM_WIDTH, heads=4, kv_heads=2)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_plan_runs_offline_on_every_preset(preset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config_module.load(preset)
    shipped = {path: hub_configs.load(path) is not None for path in (cfg.model.encoder.path, cfg.model.llm.path)}
    if not all(shipped.values()):
        monkeypatch.chdir(tmp_path)
        _tiny_demo_models(tmp_path, cfg)
    result = runner.invoke(app, ["plan", str(preset.resolve()), "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["total"]["params"] == sum(p["params"] for p in plan["parts"].values())
    assert plan["memory_bytes"]["train_total"] > plan["memory_bytes"]["weights"] > 0
    assert all(value > 0 for value in plan["flops"].values())
    if all(shipped.values()):
        assert plan["assumptions"]["config_sources"] == {"encoder": "shipped", "llm": "shipped"}
    tables = runner.invoke(app, ["plan", str(preset.resolve()), "--batch-seconds", "60"])
    assert tables.exit_code == 0, tables.output
    assert "Parameters" in tables.stdout and "60 s of audio" in tables.stdout


def test_the_24gb_preset_fits_a_24gb_card_with_room_to_spare() -> None:
    plan = build_plan(config_module.load_preset("whisper-medium_qwen3-0.6b"))
    assert plan.memory["train_total"] + 2 * 2**30 < 24e9  # + CUDA context and allocator slack


def test_a_model_that_is_neither_a_folder_nor_known_is_one_line(tiny_config, tmp_path: Path) -> None:
    cfg = config_module.replace(tiny_config, **{"model.llm.path": str(tmp_path / "no-such-model")})
    result = runner.invoke(app, ["plan", str(config_module.dump(cfg, tmp_path / "x.toml"))])
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1 and "[model.llm] path" in result.stderr


# ----------------------------------------------------------------------------- the activation formula


def _saved_elements(model: nn.Module, run) -> int:
    """Elements of the tensors autograd keeps for backward (weights and buffers excluded)."""
    owned = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in owned:
            seen[storage.data_ptr()] = storage.nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(seen.values())


def _small_llm(family: str) -> nn.Module:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, Qwen3Config, Qwen3ForCausalLM

    shape = {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": 64, "vocab_size": 64}
    if family == "qwen3":
        config = Qwen3Config(num_key_value_heads=2, **shape)
        model = Qwen3ForCausalLM
    else:
        config = Gemma3TextConfig(num_key_value_heads=1, sliding_window=512, **shape)
        model = Gemma3ForCausalLM
    config._attn_implementation = "sdpa"
    return model(config)


@pytest.mark.parametrize("family", ["qwen3", "gemma3"])
@pytest.mark.parametrize("mode", ["frozen", "trained", "lora"])
def test_llm_activation_estimate_tracks_saved_tensors(family: str, mode: str) -> None:
    llm, tokens = _small_llm(family), 64
    lora = LoraConfig(enabled=mode == "lora", r=8, dropout=0.05)
    estimate = llm_activation_elements(llm, llm_shape(llm.config), mode == "trained", lora)
    llm.requires_grad_(mode == "trained")
    if lora.enabled:
        apply_lora(llm, lora, "model.llm.lora")
    llm.train()
    x = torch.randn(1, tokens, 256, requires_grad=True)  # gradients flow back to the connector
    saved = _saved_elements(llm, lambda: llm.model(inputs_embeds=x)) / tokens
    assert estimate == pytest.approx(saved, rel=0.1)


@pytest.mark.parametrize("trained", [False, True])
def test_encoder_activation_estimate_tracks_saved_tensors(trained: bool) -> None:
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = WhisperConfig(d_model=128, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=512, num_mel_bins=16)
    config._attn_implementation = "sdpa"
    encoder = WhisperEncoder(config).requires_grad_(trained)
    x, frames = torch.randn(1, 64, 128, requires_grad=True), 64

    def run() -> None:
        h = x
        for layer in encoder.layers:
            out = layer(h, None)
            h = out[0] if isinstance(out, tuple) else out

    estimate = encoder_activation_elements(encoder, config, trained, LoraConfig())
    assert estimate == pytest.approx(_saved_elements(encoder, run) / frames, rel=0.15)
