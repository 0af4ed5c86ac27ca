"""Decode a DataLoader of batches into transcripts, in dataset order."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader

from macasr.data.collate import Batch
from macasr.model.build import autocast
from macasr.model.decoding import DecodingOptions
from macasr.model.speech_llm import SpeechLLM


@torch.no_grad()
def decode_loader(
    model: SpeechLLM, loader: DataLoader[Batch], options: DecodingOptions, device: torch.device, precision: str,
    on_batch: Callable[[Batch], None] | None = None,
) -> tuple[dict[int, str], list[str]]:
    """→ ({dataset index: hypothesis}, [one line per clip that could not be read])."""
    was_training = model.training
    model.eval()
    hypotheses: dict[int, str] = {}
    skipped: list[str] = []
    try:
        for batch in loader:
            skipped += batch.skipped
            if len(batch):
                with autocast(device, precision):
                    texts = model.generate(batch.to(device), options)
                hypotheses.update(zip(batch.indices, texts))
            if on_batch is not None:
                on_batch(batch)
    finally:
        model.train(was_training)
    return hypotheses, skipped
