"""One example per clip and the padded `Batch` that `SpeechLLM.forward`/`generate` take.

Symbols: B batch, C feature bins (or encoder width D), L feature frames, M target tokens.
"""

from __future__ import annotations

import dataclasses
import re

import torch
from torch import nn


_LINE_NUMBER = re.compile(r":\d+$")  # FILE:LINE origins (macasr JSONL)


@dataclasses.dataclass
class Example:
    index: int  # position in the set being decoded, so results can be put back in order
    id: str
    text: str
    duration: float  # seconds actually read
    features: torch.Tensor  # (C, L); encoder frames (D, T) when `encoded`
    targets: list[int]  # transcript ids ending in the end token (empty at inference)
    warnings: list[str] = dataclasses.field(default_factory=list)  # one line per doubt about a clip that is used
    encoded: bool = False
    no_speech: bool = False  # the VAD found no speech, and the clip is decoded all the same (eval with vad off)


@dataclasses.dataclass(frozen=True)
class BadClip:
    """A clip that could not be used: where it came from and why (one line, and one
    bad_clips.jsonl record)."""

    origin: str | None  # manifest "FILE:LINE" (macasr JSONL) or FILE (lhotse manifests); None when unknown
    id: str
    audio: str
    why: str

    @property
    def line(self) -> str:
        """`AUDIO: why (manifest FILE:LINE)`; a lhotse manifest has no line per cut, so its cut id
        is named instead (segments of one recording share the file and often the reason)."""
        if not self.origin:  # a file given directly (transcribe): the path says it all
            return f"{self.audio}: {self.why}"
        if _LINE_NUMBER.search(self.origin):
            return f"{self.audio}: {self.why} (manifest {self.origin})"
        return f"{self.audio}: {self.why} (manifest {self.origin}, cut {self.id})"

    def record(self) -> dict[str, str | None]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class NoSpeech:
    """A clip read fine in which the voice activity detector found no speech: it is not decoded
    and its transcript is empty (`CutDataset(speech_gate=...)`)."""

    index: int


@dataclasses.dataclass
class Batch:
    indices: list[int]
    ids: list[str]
    texts: list[str]
    durations: list[float]
    features: torch.Tensor  # (B, C, L); encoder frames (B, D, T) when `encoded`
    feature_lengths: torch.Tensor  # (B,) feature frames, or encoder frames when `encoded`
    targets: torch.Tensor  # (B, M), right-padded with 0
    target_lengths: torch.Tensor  # (B,)
    bad_clips: list[BadClip] = dataclasses.field(default_factory=list)  # clips left out of the batch
    warnings: list[str] = dataclasses.field(default_factory=list)  # one line per used clip that looks wrong
    encoded: bool = False  # features are cached encoder frames: the model skips its encoder
    no_speech: list[int] = dataclasses.field(default_factory=list)  # indices of clips the VAD found no speech in (left out, or decoded when flagged)

    @property
    def skipped(self) -> list[str]:
        """One line per clip that could not be used."""
        return [b.line for b in self.bad_clips]

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str) -> Batch:
        move = {f: getattr(self, f).to(device, non_blocking=True) for f in ("features", "feature_lengths", "targets", "target_lengths")}
        return dataclasses.replace(self, **move)

    def pin_memory(self) -> Batch:
        pinned = {f: getattr(self, f).pin_memory() for f in ("features", "feature_lengths", "targets", "target_lengths")}
        return dataclasses.replace(self, **pinned)


def collate(items: list[Example | BadClip | NoSpeech]) -> Batch:
    """Pad examples into a Batch; BadClips are clips that could not be used, NoSpeech ones clips
    without speech (their indices on Batch.no_speech); the examples' warnings are gathered on Batch.warnings."""
    examples = [x for x in items if isinstance(x, Example)]
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
        bad_clips=[x for x in items if isinstance(x, BadClip)],
        warnings=[w for x in examples for w in x.warnings],
        encoded=any(x.encoded for x in examples),
        no_speech=[x.index for x in items if isinstance(x, NoSpeech) or (isinstance(x, Example) and x.no_speech)],
    )
