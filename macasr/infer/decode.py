"""Decode a DataLoader of batches into transcripts, in dataset order."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader

from macasr.data.collate import Batch
from macasr.model.build import autocast
from macasr.model.decoding import DecodingOptions
from macasr.model.speech_llm import SpeechLLM


@dataclasses.dataclass
class Decoded:
    """What `decode_loader` returns; indices are positions in the loader's dataset."""

    hypotheses: dict[int, str]  # dataset index -> transcript
    stop_reasons: dict[int, str]  # dataset index -> "end" | "repeat" | "max_tokens"
    skipped: list[str]  # one line per clip that could not be read (from Batch.skipped)
    warnings: list[str]  # one line per clip that was read but looks wrong (Batch.warnings)


@torch.no_grad()
def decode_loader(
    model: SpeechLLM, loader: DataLoader[Batch], options: DecodingOptions, device: torch.device, precision: str,
    on_batch: Callable[[Batch], None] | None = None,
) -> Decoded:
    """Decode every batch; clips that could not be read are listed in `skipped`, not decoded."""
    was_training = model.training
    model.eval()
    out = Decoded({}, {}, [], [])
    try:
        for batch in loader:
            out.skipped += batch.skipped
            out.warnings += getattr(batch, "warnings", [])
            if len(batch):
                with autocast(device, precision):
                    texts = model.generate(batch.to(device), options)
                out.hypotheses.update(zip(batch.indices, texts))
            if on_batch is not None:
                on_batch(batch)
    finally:
        model.train(was_training)
    return out
