"""Datasets, duration-bucketed batches and DataLoaders.

The sampler chooses batches from durations alone (no I/O) and gives each DDP rank its own
share; the dataset does the reading and featurizing in worker processes. A clip that cannot be
read (or whose features are not finite) is either reported and skipped or stops the run with its
path (`[data] on_bad_clip`). A clip that is read but whose length disagrees with the manifest's
duration is used, with a line on `Example.warnings`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from macasr.audio import SAMPLE_RATE, audio_duration, load_audio
from macasr.data.collate import Batch, Example, collate
from macasr.data.manifest import Utterance
from macasr.errors import DataError

BUCKET_BATCHES = 50  # batches drawn together and sorted by length, so padding stays low
DURATION_TOLERANCE = 0.10  # a clip decoded this much longer or shorter than its manifest duration is reported


class SpeechDataset(Dataset):
    def __init__(
        self,
        utterances: Sequence[Utterance],
        featurizer: Callable[[Any], torch.Tensor],
        tokenize: Callable[[str], list[int]] | None = None,
        on_bad_clip: str = "skip",
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.utterances = list(utterances)
        self.featurizer = featurizer
        self.tokenize = tokenize
        self.on_bad_clip = on_bad_clip
        self.augment = augment

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> Example | str:
        u = self.utterances[index]
        try:
            wave, features = self._read(u)
        except DataError as e:
            if self.on_bad_clip == "error":
                raise
            return str(e)
        if self.augment is not None:
            features = self.augment(features)
        seconds = len(wave) / SAMPLE_RATE
        return Example(
            index=index, id=u.id, text=u.text, duration=seconds,
            features=features, targets=self.tokenize(u.text) if self.tokenize else [],
            warnings=[w for w in [duration_warning(u, seconds)] if w],
        )

    def _read(self, u: Utterance) -> tuple[np.ndarray, torch.Tensor]:
        """→ waveform (samples,), features (C, L); DataError naming the clip if either is unusable."""
        wave = load_audio(u.audio, u.offset or 0.0, None if u.offset is None else u.duration)
        features = self.featurizer(wave)
        if not torch.isfinite(features).all():  # finite audio can still overflow (power spectrum)
            raise DataError(f"{u.audio}: its features are not finite (samples peak at {float(np.abs(wave).max()):.3g}); "
                            f"expected samples of about -1 to 1")
        return wave, features


def duration_warning(u: Utterance, decoded: float) -> str | None:
    """A line when the seconds read (`decoded`) differ from the manifest's duration by more than
    DURATION_TOLERANCE, else None. With an offset, `duration` is what to read, so only a file
    that ends early can make them differ; that warning gives the file's length."""
    if abs(decoded - u.duration) <= DURATION_TOLERANCE * u.duration:
        return None
    clip = f"{u.audio} (id {u.id})"
    if u.offset is not None:
        return (f"{clip}: offset {u.offset:g} s + duration {u.duration:g} s runs past the end of the file "
                f"({audio_duration(u.audio):.2f} s); read {decoded:.2f} s")
    return (f"{clip}: decoded {decoded:.2f} s but the manifest says duration {u.duration:g} s; "
            f"batching and hours use the manifest's value")


class DurationBatchSampler(Sampler[list[int]]):
    """Batches of similar duration, capped by count and optionally by total seconds.

    Training: shuffled per epoch (seeded), sorted within buckets of BUCKET_BATCHES batches, then
    the batches shuffled. Evaluation: longest first, so memory peaks at once. Each of
    `world_size` ranks takes every world_size-th batch of the same list.
    """

    def __init__(
        self, durations: Sequence[float], batch_size: int, max_batch_seconds: float = 0.0, shuffle: bool = True,
        seed: int = 0, rank: int = 0, world_size: int = 1,
    ) -> None:
        self.durations = list(durations)
        self.batch_size = batch_size
        self.max_batch_seconds = max_batch_seconds
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0  # batches of this epoch already consumed (resume)

    def _split(self, indices: list[int]) -> list[list[int]]:
        batches, current, seconds = [], [], 0.0
        for i in indices:
            d = self.durations[i]
            full = len(current) >= self.batch_size
            too_long = self.max_batch_seconds > 0 and current and seconds + d > self.max_batch_seconds
            if full or too_long:
                batches.append(current)
                current, seconds = [], 0.0
            current.append(i)
            seconds += d
        return batches + ([current] if current else [])

    def batches(self) -> list[list[int]]:
        indices = list(range(len(self.durations)))
        if not self.shuffle:
            indices.sort(key=lambda i: -self.durations[i])
            batches = self._split(indices)
        else:
            rng = random.Random(self.seed + self.epoch)
            rng.shuffle(indices)
            size = self.batch_size * BUCKET_BATCHES
            batches = []
            for start in range(0, len(indices), size):
                bucket = sorted(indices[start : start + size], key=lambda i: self.durations[i])
                batches += self._split(bucket)
            rng.shuffle(batches)
        if self.world_size > 1:
            if self.shuffle:  # every rank must take the same number of steps
                batches = batches[: len(batches) // self.world_size * self.world_size]
            batches = batches[self.rank :: self.world_size]
        return batches

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()[self.start :]

    def __len__(self) -> int:
        return max(0, len(self.batches()) - self.start)


def build_loader(
    utterances: Sequence[Utterance], featurizer: Callable[[Any], torch.Tensor], *,
    tokenize: Callable[[str], list[int]] | None = None, batch_size: int, max_batch_seconds: float = 0.0,
    shuffle: bool, seed: int = 0, num_workers: int = 0, on_bad_clip: str = "skip", rank: int = 0, world_size: int = 1,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> DataLoader[Batch]:
    dataset = SpeechDataset(utterances, featurizer, tokenize, on_bad_clip, augment)
    sampler = DurationBatchSampler(
        [u.duration for u in utterances], batch_size, max_batch_seconds, shuffle, seed, rank, world_size
    )
    return DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
        pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0,
    )
