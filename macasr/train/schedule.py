"""Linear warmup then cosine decay, counted in optimizer steps (not micro-batches)."""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr for the update that follows `step` completed optimizer steps."""
    if step < warmup_steps:  # 1) linear warmup from lr/warmup to lr
        return (step + 1) / warmup_steps
    if step >= max_steps:  # 2) past the end: hold the floor
        return min_lr_ratio
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)  # 3) cosine to the floor
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup_steps, max_steps, min_lr_ratio)
    )
