"""Downsamplers: the first step of every connector, encoder frames → k-fold fewer frames.

Symbols: B batch, T encoder frames, k downsampling factor (`[model.connector] downsample`),
T' = ceil(T/k) downsampled frames, D encoder width.

A downsampler is a `Downsampler` registered in `DOWNSAMPLERS` under the name that
`[model.connector] downsampler` selects (docs/extending.md). The connector builds it as
`cls(k, D)` and reads its `output_dim`, the width its `project` receives. `forward(frames,
lengths)` takes (B, T, D) frames, zero beyond each clip's length, and returns (B, T', output_dim)
with T' per clip, which must equal `output_lengths(lengths)`; the connector zeroes the output
beyond those lengths. Built in:
- stack: concatenate k consecutive frames, (B, T, D) → (B, T', k·D); no parameters.
- conv1d: a strided Conv1d (kernel = stride = k), (B, T, D) → (B, T', D). Its output keeps the
  encoder width D, so it costs D·D·k weights (a k·D-wide output would cost (kD)²) and the first
  layer of `project` stays as narrow as without downsampling; the conv is a learned k-frame
  pooling, the stack lets `project` learn the same thing in its first layer.
"""

from __future__ import annotations

import torch
from torch import nn

from macasr.model.connector_config import DOWNSAMPLERS


def ceil_div(n: torch.Tensor | int, d: int) -> torch.Tensor | int:
    return (n + d - 1) // d


def pad_to_multiple(frames: torch.Tensor, k: int) -> torch.Tensor:
    """(B, T, D) → (B, k·ceil(T/k), D), zero frames appended."""
    pad = (-frames.shape[1]) % k
    return nn.functional.pad(frames, (0, 0, 0, pad)) if pad else frames


def stack_frames(frames: torch.Tensor, lengths: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, D) → (B, ceil(T/k), k·D); the last group of each clip is zero-padded."""
    batch, _, dim = frames.shape
    frames = pad_to_multiple(frames, k)
    return frames.reshape(batch, frames.shape[1] // k, k * dim), ceil_div(lengths, k)  # (B, T/k, k*D)


class Downsampler(nn.Module):
    """Base: (B, T, D) frames and (B,) lengths → (B, T', output_dim) and T' per clip.

    Built from k and the encoder width D; a subclass sets `output_dim` when it is not D and
    overrides `output_lengths` when T' is not ceil(T/k).
    """

    def __init__(self, k: int, input_dim: int) -> None:
        super().__init__()
        self.k = k
        self.input_dim = input_dim  # D
        self.output_dim = input_dim  # what the connector's `project` receives

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return ceil_div(lengths, self.k)

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


@DOWNSAMPLERS.register("stack")
class StackDownsampler(Downsampler):
    """Concatenate k consecutive frames: (B, T, D) → (B, T', k·D), no parameters."""

    def __init__(self, k: int, input_dim: int) -> None:
        super().__init__(k, input_dim)
        self.output_dim = k * input_dim

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return stack_frames(frames, lengths, self.k)


@DOWNSAMPLERS.register("conv1d")
class Conv1dDownsampler(Downsampler):
    """A strided Conv1d (kernel = stride = k): (B, T, D) → (B, T', D), D·D·k + D parameters.

    Its `weight` (D, D, k) and `bias` (D,) sit on the downsampler itself, as on the nn.Conv1d
    earlier versions used, so checkpoints keep their names (`connector.downsampler.weight`).
    """

    def __init__(self, k: int, input_dim: int) -> None:
        super().__init__(k, input_dim)
        conv = nn.Conv1d(input_dim, input_dim, k, stride=k)  # initialized as nn.Conv1d does
        self.weight, self.bias = conv.weight, conv.bias

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = nn.functional.conv1d(pad_to_multiple(frames, self.k).transpose(1, 2), self.weight, self.bias, stride=self.k)
        return x.transpose(1, 2), self.output_lengths(lengths)  # (B, T', D)
