"""A downsampler of your own, in one file: `[plugins] modules = ["my_downsamplers.py"]` (docs/extending.md)."""

import torch
from torch import nn

from macasr.model.downsamplers import DOWNSAMPLERS, Downsampler, stack_frames


@DOWNSAMPLERS.register("pool")
class WeightedPool(Downsampler):
    """A learned weighted average of k consecutive frames: (B, T, D) → (B, ceil(T/k), D)."""

    def __init__(self, k: int, input_dim: int) -> None:
        super().__init__(k, input_dim)  # sets self.k, self.input_dim and self.output_dim (= D, as here)
        self.logits = nn.Parameter(torch.zeros(k))  # equal weights at the start: a plain average

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stacked, short = stack_frames(frames, lengths, self.k)  # (B, T', k·D); frames past a clip's end are 0
        groups = stacked.unflatten(-1, (self.k, self.input_dim))  # (B, T', k, D)
        return torch.einsum("btkd,k->btd", groups, self.logits.softmax(0)), short
