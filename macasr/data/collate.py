"""One example per clip and the padded `Batch` that `SpeechLLM.forward`/`generate` take.

Symbols: B batch, C feature bins, L feature frames, M target tokens.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn


@dataclasses.dataclass
class Example:
    index: int  # position in the dataset, so decoded results can be put back in order
    id: str
    text: str
    duration: float  # seconds actually read
    features: torch.Tensor  # (C, L)
    targets: list[int]  # transcript ids ending in the end token (empty at inference)
    warnings: list[str] = dataclasses.field(default_factory=list)  # one line per doubt about a clip that is used


@dataclasses.dataclass
class Batch:
    indices: list[int]
    ids: list[str]
    texts: list[str]
    durations: list[float]
    features: torch.Tensor  # (B, C, L)
    feature_lengths: torch.Tensor  # (B,)
    targets: torch.Tensor  # (B, M), right-padded with 0
    target_lengths: torch.Tensor  # (B,)
    skipped: list[str] = dataclasses.field(default_factory=list)  # one line per unusable clip
    warnings: list[str] = dataclasses.field(default_factory=list)  # one line per used clip that looks wrong
    encoded: bool = False  # True: features are encoder frames (B, D, T) from the feature cache, lengths count frames

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str) -> Batch:
        move = {f: getattr(self, f).to(device, non_blocking=True) for f in ("features", "feature_lengths", "targets", "target_lengths")}
        return dataclasses.replace(self, **move)

    def pin_memory(self) -> Batch:
        pinned = {f: getattr(self, f).pin_memory() for f in ("features", "feature_lengths", "targets", "target_lengths")}
        return dataclasses.replace(self, **pinned)


def collate(items: list[Example | str]) -> Batch:
    """Pad examples into a Batch; strings are reports of clips that could not be read; the
    examples' warnings are gathered on Batch.warnings."""
    examples = [x for x in items if isinstance(x, Example)]
    skipped = [x for x in items if isinstance(x, str)]
    features = [x.features.T for x in examples]  # (L, C) each, for pad_sequence
    targets = [torch.tensor(x.targets, dtype=torch.long) for x in examples]
    empty = torch.zeros(0, 0)
    return Batch(
        indices=[x.index for x in examples],
        ids=[x.id for x in examples],
        texts=[x.text for x in examples],
        durations=[x.duration for x in examples],
        features=nn.utils.rnn.pad_sequence(features, batch_first=True).transpose(1, 2) if examples else empty,
        feature_lengths=torch.tensor([x.features.shape[-1] for x in examples], dtype=torch.long),
        targets=nn.utils.rnn.pad_sequence(targets, batch_first=True) if examples else empty.long(),
        target_lengths=torch.tensor([len(x.targets) for x in examples], dtype=torch.long),
        skipped=skipped,
        warnings=[w for x in examples for w in x.warnings],
    )
