"""Decode a DataLoader of batches into transcripts, in dataset order."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader

from macasr.data.collate import Batch
from macasr.data.loader import check_bad_clips
from macasr.model.build import autocast
from macasr.model.decoding import STOP_END, DecodingOptions, Stop
from macasr.model.speech_llm import SpeechLLM


@dataclasses.dataclass
class Decoded:
    """What `decode_loader` found, keyed by dataset index."""

    hypotheses: dict[int, str] = dataclasses.field(default_factory=dict)  # dataset index -> transcript
    stop_reasons: dict[int, Stop] = dataclasses.field(default_factory=dict)  # -> "end" | "repeat" | "max_tokens"
    skipped: list[str] = dataclasses.field(default_factory=list)  # one line per clip that could not be read
    warnings: list[str] = dataclasses.field(default_factory=list)  # one line per clip read that looks wrong
    no_speech: set[int] = dataclasses.field(default_factory=set)  # clips the VAD found no speech in (filled when it ran)

    def guard_stops(self) -> dict[int, Stop]:
        """The clips a guard cut (stop reason other than "end"): their transcripts may be truncated loops."""
        return {i: stop for i, stop in self.stop_reasons.items() if stop != STOP_END}


@torch.no_grad()
def decode_loader(
    model: SpeechLLM, loader: DataLoader[Batch], options: DecodingOptions, device: torch.device, precision: str,
    on_batch: Callable[[Batch], None] | None = None, on_bad_clip: str = "skip",
) -> Decoded:
    """Decode every batch → `Decoded` (transcripts and stop reasons by the cuts' index, and the
    lines for clips skipped or warned about); with on_bad_clip = "error", DataError at the first
    clip that cannot be read. Clips the dataset's speech gate found silent are listed in
    `no_speech`; those it left out get "" (stop "end", nothing was cut), those it flagged
    (`decode_without_speech`) are decoded like any other."""
    was_training = model.training
    model.eval()
    decoded = Decoded()
    try:
        for batch in loader:
            check_bad_clips(batch, on_bad_clip)
            decoded.skipped += batch.skipped
            decoded.warnings += batch.warnings
            decoded.no_speech.update(batch.no_speech)
            left_out = set(batch.no_speech) - set(batch.indices)  # not decoded: an empty transcript
            decoded.hypotheses.update(dict.fromkeys(left_out, ""))
            decoded.stop_reasons.update(dict.fromkeys(left_out, STOP_END))
            if len(batch):
                with autocast(device, precision):
                    generated = model.generate_with_stops(batch.to(device), options)
                decoded.hypotheses.update(zip(batch.indices, (g.text for g in generated)))
                decoded.stop_reasons.update(zip(batch.indices, (g.stop for g in generated)))
            if on_batch is not None:
                on_batch(batch)
    finally:
        model.train(was_training)
    return decoded
