"""Connectors: encoder frames → speech embeddings in the LLM's input space.

Symbols: B batch, T encoder frames, k frames stacked, D encoder width, H LLM hidden width.

Every connector first stacks k consecutive frames (B, T, D) → (B, ceil(T/k), k·D), which cuts
the LLM's sequence length k-fold, then projects to H. Output length for input length T is
ceil(T / k) for every connector here. Frames beyond a clip's length must be zero on input (the
encoders guarantee it), so a clip's last stacked frame is the same alone and in a batch.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import nn

from macasr.registry import ComponentConfig, Registry, option


@dataclasses.dataclass(frozen=True)
class ConnectorConfig(ComponentConfig):
    downsample: int = option(5, "Reduce the frame rate k-fold before projecting (50 Hz / 5 = 10 Hz).")
    downsampler: Literal["stack", "conv1d"] = option("stack", "stack: concatenate k consecutive frames; conv1d: a strided convolution (kernel and stride k).")

    def validate(self) -> list[str]:
        return [] if self.downsample >= 1 else [f"[model.connector] downsample: must be at least 1, got {self.downsample}"]


@dataclasses.dataclass(frozen=True)
class LinearConnectorConfig(ConnectorConfig):
    name: str = option("linear", "Which connector to use.")


@dataclasses.dataclass(frozen=True)
class MLPConnectorConfig(ConnectorConfig):
    name: str = option("mlp", "Which connector to use.")
    hidden_dim: int = option(2048, "Width of the MLP's hidden layer (0 = the LLM's hidden width).")
    dropout: float = option(0.0, "Dropout on the hidden layer while training.")

    def validate(self) -> list[str]:
        problems = super().validate()
        if self.hidden_dim < 0:
            problems.append(f"[model.connector] hidden_dim: must be 0 or positive, got {self.hidden_dim}")
        if not 0 <= self.dropout < 1:
            problems.append(f"[model.connector] dropout: must be in [0, 1), got {self.dropout}")
        return problems


CONNECTORS: Registry[nn.Module] = Registry("connector", ConnectorConfig)


def stack_frames(frames: torch.Tensor, lengths: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, D) → (B, ceil(T/k), k·D); the last group of each clip is zero-padded."""
    batch, steps, dim = frames.shape
    pad = (-steps) % k
    if pad:
        frames = nn.functional.pad(frames, (0, 0, 0, pad))
    stacked = frames.reshape(batch, (steps + pad) // k, k * dim)  # (B, T/k, k*D)
    return stacked, (lengths + k - 1) // k


class Connector(nn.Module):
    """Base: stack frames, then `project` (B, T/k, k·D) → (B, T/k, H)."""

    def __init__(self, cfg: ConnectorConfig, input_dim: int, output_dim: int) -> None:
        super().__init__()
        self.k = cfg.downsample
        self.input_dim = input_dim * cfg.downsample
        self.output_dim = output_dim

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return (lengths + self.k - 1) // self.k

    def project(self, stacked: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stacked, out_lengths = stack_frames(frames, lengths, self.k)
        return self.project(stacked), out_lengths


@CONNECTORS.register("linear", LinearConnectorConfig)
class LinearConnector(Connector):
    """One linear layer: the smallest connector, a useful baseline."""

    def __init__(self, cfg: LinearConnectorConfig, input_dim: int, output_dim: int) -> None:
        super().__init__(cfg, input_dim, output_dim)
        self.proj = nn.Linear(self.input_dim, output_dim)

    def project(self, stacked: torch.Tensor) -> torch.Tensor:
        return self.proj(stacked)


@CONNECTORS.register("mlp", MLPConnectorConfig)
class MLPConnector(Connector):
    """Linear → GELU → Linear, the connector most speech-LLM recipes use."""

    def __init__(self, cfg: MLPConnectorConfig, input_dim: int, output_dim: int) -> None:
        super().__init__(cfg, input_dim, output_dim)
        hidden = cfg.hidden_dim or output_dim
        self.net = nn.Sequential(
            nn.Linear(self.input_dim, hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(hidden, output_dim)
        )

    def project(self, stacked: torch.Tensor) -> torch.Tensor:
        return self.net(stacked)
