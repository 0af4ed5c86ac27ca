"""A connector of your own, in one file: `[plugins] modules = ["my_connectors.py"]` (docs/extending.md)."""

import dataclasses

import torch
from torch import nn

from macasr.model.connectors import CONNECTORS, Connector, ConnectorConfig
from macasr.registry import option


@dataclasses.dataclass(frozen=True)
class GatedConnectorConfig(ConnectorConfig):
    name: str = option("gated", "Which connector to use.")
    init_gate: float = option(0.5, "Starting value of the learned output gate.")

    def rules(self) -> dict[str, tuple[bool, str]]:
        return {**super().rules(), "init_gate": (self.init_gate > 0, "must be positive")}


@CONNECTORS.register("gated", GatedConnectorConfig)
class GatedConnector(Connector):
    """One linear projection of the downsampled frames, scaled by a learned gate: (B, T', k·D) → (B, T', H)."""

    def __init__(self, cfg: GatedConnectorConfig, input_dim: int, output_dim: int) -> None:
        super().__init__(cfg, input_dim, output_dim)  # the base class downsamples k-fold (`downsample`, `downsampler`)
        self.proj = nn.Linear(self.input_dim, output_dim)
        self.gate = nn.Parameter(torch.tensor(cfg.init_gate))

    def project(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.gate * self.proj(x)
