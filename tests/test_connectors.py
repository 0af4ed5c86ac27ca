"""Every registered connector, with either downsampler: it learns, it leaves frozen parts alone,
its embeddings do not depend on the batch, its stated output length is its real one, and its
TOML table round-trips and is checked."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from conftest import noise
from macasr import config as config_module
from macasr.config import Config
from macasr.data.collate import Example, collate
from macasr.errors import ConfigError
from macasr.model.build import build_model
from macasr.model.connectors import CONNECTORS, ConnectorConfig
from macasr.model.llm import TargetTokenizer

DOWNSAMPLERS = ["stack", "conv1d"]
CASES = list(itertools.product(CONNECTORS.names(), DOWNSAMPLERS))
IDS = [f"{name}-{down}" for name, down in CASES]
# Small values for whichever of these fields a connector has, so every test stays fast.
SMALL = {"downsample": 2, "hidden_dim": 16, "dim": 16, "heads": 2, "layers": 2, "window": 3, "num_queries": 2}
LENGTHS = [7, 1, 12, 5, 6]  # frames: partial and whole stacks and windows, a one-frame clip


def small_config(name: str, downsampler: str, **changes) -> ConnectorConfig:
    cls = CONNECTORS.config_type(name)
    own = {f.name for f in dataclasses.fields(cls)}
    return cls(**{**{k: v for k, v in SMALL.items() if k in own}, "downsampler": downsampler, **changes})


def build(tiny_config: Config, name: str, downsampler: str):
    return build_model(config_module.replace(tiny_config, **{"model.connector": small_config(name, downsampler)}))


def make_batch(model, texts=("the cat sat on the mat", "hello world", "seven green apples"), seconds=(1.3, 0.6, 2.2)):
    target = TargetTokenizer(model.tokenizer, model.prompt.end_id)
    examples = [Example(i, f"u{i}", t, s, model.encoder.featurizer(noise(s, seed=i)), target(t))
                for i, (t, s) in enumerate(zip(texts, seconds))]
    return collate(examples)


def padded_frames(lengths: list[int], dim: int) -> torch.Tensor:
    """(B, T, D) random frames with random garbage beyond each length, which must be ignored."""
    return torch.randn(len(lengths), max(lengths), dim)


@pytest.mark.parametrize(("name", "downsampler"), CASES, ids=IDS)
def test_trainable_parameters_get_gradients_and_frozen_ones_none(tiny_config, name, downsampler) -> None:
    model = build(tiny_config, name, downsampler).train()
    loss = model(make_batch(model))
    loss.backward()
    assert torch.isfinite(loss)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("connector.") for n, _ in trainable)
    for n, p in trainable:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n
    for n, p in itertools.chain(model.encoder.named_parameters(), model.llm.named_parameters()):
        assert not p.requires_grad and p.grad is None, n


@pytest.mark.parametrize(("name", "downsampler"), CASES, ids=IDS)
def test_batched_embeddings_equal_one_by_one(tiny_config, name, downsampler) -> None:
    model = build(tiny_config, name, downsampler).eval()
    connector, lengths = model.connector, torch.tensor(LENGTHS)
    frames = padded_frames(LENGTHS, model.encoder.output_dim)
    with torch.no_grad():
        batched, out_lengths = connector(frames, lengths)
        for i, n in enumerate(LENGTHS):
            alone, alone_length = connector(frames[i : i + 1, :n], lengths[i : i + 1])
            m = int(out_lengths[i])
            assert alone_length.item() == m == alone.shape[1]
            torch.testing.assert_close(batched[i, :m], alone[0], atol=1e-5, rtol=1e-4)
            assert batched[i, m:].abs().sum() == 0  # nothing beyond a clip's embeddings
    assert torch.isfinite(batched).all()


@pytest.mark.parametrize(("name", "downsampler"), CASES, ids=IDS)
def test_output_lengths_are_the_real_output_lengths(name, downsampler) -> None:
    connector = CONNECTORS.build(small_config(name, downsampler), 8, 12).eval()
    with torch.no_grad():
        for n in [1, 2, 3, 5, 6, 7, 13]:
            out, out_lengths = connector(torch.randn(1, n, 8), torch.tensor([n]))
            assert out.shape[1] == out_lengths.item() == connector.output_lengths(torch.tensor([n])).item(), n
        out, out_lengths = connector(padded_frames(LENGTHS, 8), torch.tensor(LENGTHS))
    assert out_lengths.tolist() == connector.output_lengths(torch.tensor(LENGTHS)).tolist()
    assert out.shape[1] == max(out_lengths.tolist()) and out.shape[2] == 12


@pytest.mark.parametrize("name", CONNECTORS.names())
def test_conv1d_keeps_the_encoder_width(name) -> None:
    k, dim = 3, 8
    stacked = CONNECTORS.build(small_config(name, "stack", downsample=k), dim, 12)
    conv = CONNECTORS.build(small_config(name, "conv1d", downsample=k), dim, 12)
    assert (stacked.input_dim, conv.input_dim) == (k * dim, dim)
    assert sum(p.numel() for p in conv.downsampler.parameters()) == dim * dim * k + dim


def test_qformer_emits_num_queries_per_window_of_downsampled_frames() -> None:
    k, window, queries = 2, 3, 4
    connector = CONNECTORS.build(small_config("qformer", "stack", downsample=k, window=window, num_queries=queries), 8, 12)
    frames = torch.tensor([1, k * window, k * window + 1, 5 * k * window])
    assert connector.output_lengths(frames).tolist() == [queries, queries, 2 * queries, 5 * queries]


@pytest.mark.parametrize("name", CONNECTORS.names())
def test_connector_table_round_trips_through_toml_and_checkpoints(name) -> None:
    cfg = config_module.replace(Config(), **{"model.connector": small_config(name, "conv1d", downsample=3)})
    text = config_module.dumps(cfg)  # what `macasr config init` writes
    assert config_module.loads(text) == cfg
    assert config_module.from_dict(config_module.to_dict(cfg)) == cfg  # a checkpoint's stored config
    for f in dataclasses.fields(cfg.model.connector):
        assert f"# {f.metadata['help']}" in text


@pytest.mark.parametrize("name", CONNECTORS.names())
def test_unknown_connector_key_suggests_the_closest_name(name) -> None:
    base = {f.name for f in dataclasses.fields(ConnectorConfig)}
    own = [f.name for f in dataclasses.fields(CONNECTORS.config_type(name)) if f.name not in base]
    key = (own or ["downsampler"])[0]
    with pytest.raises(ConfigError) as e:
        config_module.loads(f'[model.connector]\nname = "{name}"\n{key}x = 1\n', "cfg.toml")
    assert str(e.value) == f"cfg.toml:3: unknown key `{key}x` in [model.connector]; did you mean `{key}`?"


def test_attention_widths_are_checked_in_the_file_and_against_the_llm(tiny_config) -> None:
    with pytest.raises(ConfigError, match=r"cfg.toml:4: \[model.connector\] heads: must be at least 1 and divide dim \(30\)"):
        config_module.loads('[model.connector]\nname = "transformer"\ndim = 30\nheads = 4\n', "cfg.toml")
    too_many = small_config("qformer", "stack", dim=0, heads=3)  # the tiny LLM is 32 wide
    with pytest.raises(ConfigError, match="heads: must divide dim, the LLM's width 32"):
        build_model(config_module.replace(tiny_config, **{"model.connector": too_many}))
