"""The connectors' configs and the connector and downsampler registries, without torch
(`macasr.config` reads them while the CLI starts); the connectors themselves are in
`macasr.model.connectors` and the downsamplers in `macasr.model.downsamplers`, which register
each class under the name declared here."""

from __future__ import annotations

import dataclasses

from macasr.registry import ComponentConfig, Registry, option


@dataclasses.dataclass(frozen=True)
class ConnectorConfig(ComponentConfig):
    downsample: int = option(5, "Reduce the frame rate k-fold before projecting (50 Hz / 5 = 10 Hz).")
    downsampler: str = option("stack", "How k frames become one: stack concatenates them (k·D wide, no parameters); conv1d is a strided convolution (kernel and stride k, D wide); plugins add more (docs/extending.md).", choices="DOWNSAMPLERS")

    def rules(self) -> dict[str, tuple[bool, str]]:
        """{field: (holds, what the field must be)}; subclasses extend it."""
        return {"downsample": (self.downsample >= 1, "must be at least 1")}

    def validate(self) -> list[str]:
        return [f"[model.connector] {key}: {rule}, got {getattr(self, key)!r}" for key, (ok, rule) in self.rules().items() if not ok]


@dataclasses.dataclass(frozen=True)
class LinearConnectorConfig(ConnectorConfig):
    name: str = option("linear", "Which connector to use.")


@dataclasses.dataclass(frozen=True)
class MLPConnectorConfig(ConnectorConfig):
    name: str = option("mlp", "Which connector to use.")
    hidden_dim: int = option(2048, "Width of the MLP's hidden layer (0 = the LLM's hidden width).")
    dropout: float = option(0.0, "Dropout on the hidden layer while training.")

    def rules(self) -> dict[str, tuple[bool, str]]:
        return {**super().rules(), "hidden_dim": (self.hidden_dim >= 0, "must be 0 or positive"),
                "dropout": (0 <= self.dropout < 1, "must be in [0, 1)")}


def _attention_rules(cfg: TransformerConnectorConfig | QFormerConnectorConfig) -> dict[str, tuple[bool, str]]:
    """Rules shared by the attention connectors."""
    return {
        "layers": (cfg.layers >= 1, "must be at least 1"),
        "dim": (cfg.dim >= 0, "must be 0 (the LLM's width) or positive"),
        "heads": (cfg.heads >= 1 and cfg.dim % cfg.heads == 0, f"must be at least 1 and divide dim ({cfg.dim})"),
        "dropout": (0 <= cfg.dropout < 1, "must be in [0, 1)"),
    }


@dataclasses.dataclass(frozen=True)
class TransformerConnectorConfig(ConnectorConfig):
    name: str = option("transformer", "Which connector to use.")
    layers: int = option(2, "Self-attention layers over the downsampled frames.")
    heads: int = option(16, "Attention heads; must divide dim.")
    dim: int = option(1024, "Width of the layers (0 = the LLM's hidden width).")
    ffn_multiplier: int = option(4, "Feed-forward width as a multiple of dim.")
    dropout: float = option(0.1, "Dropout on attention weights and residual branches while training.")

    def rules(self) -> dict[str, tuple[bool, str]]:
        return {**super().rules(), **_attention_rules(self), "ffn_multiplier": (self.ffn_multiplier >= 1, "must be at least 1")}


@dataclasses.dataclass(frozen=True)
class QFormerConnectorConfig(ConnectorConfig):
    name: str = option("qformer", "Which connector to use.")
    num_queries: int = option(2, "Learned queries, so speech embeddings, per window.")
    window: int = option(5, "Downsampled frames per window (5 at 10 Hz = 0.5 s, so 2 queries give 4 embeddings a second).")
    layers: int = option(2, "Q-Former layers (self-attention, cross-attention to the window, feed-forward).")
    heads: int = option(12, "Attention heads; must divide dim.")
    dim: int = option(768, "Width of the queries (0 = the LLM's hidden width).")
    dropout: float = option(0.1, "Dropout on attention weights and residual branches while training.")

    def rules(self) -> dict[str, tuple[bool, str]]:
        return {**super().rules(), **_attention_rules(self), "num_queries": (self.num_queries >= 1, "must be at least 1"),
                "window": (self.window >= 1, "must be at least 1")}


# Downsamplers have no table of their own: `[model.connector] downsampler` names one, and it is
# built from the connector's `downsample` (k) and the encoder's width (macasr.model.downsamplers).
DOWNSAMPLERS: Registry = Registry("downsampler", ComponentConfig, module="macasr.model.downsamplers")
DOWNSAMPLERS.declare("stack")
DOWNSAMPLERS.declare("conv1d")

CONNECTORS: Registry = Registry("connector", ConnectorConfig, module="macasr.model.connectors")
CONNECTORS.declare("linear", LinearConnectorConfig)
CONNECTORS.declare("mlp", MLPConnectorConfig)
CONNECTORS.declare("transformer", TransformerConnectorConfig)
CONNECTORS.declare("qformer", QFormerConnectorConfig)
