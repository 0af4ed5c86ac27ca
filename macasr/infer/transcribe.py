"""Transcribe audio files with a trained checkpoint; the `Transcriber` public API.

Files are read in batches; a file that is missing, empty or undecodable gets an error naming it
and why, and the others are still transcribed. Each transcript says why decoding stopped, so a
loop cut by a guard is never passed off as a finished transcript.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
from lhotse import MonoCut, Recording, SupervisionSegment

from macasr.audio import audio_duration
from macasr.config import Config
from macasr.data.loader import CutDataset, build_loader, eval_sampler
from macasr.errors import DataError
from macasr.evaluate.run import decoding_options
from macasr.infer.decode import Decoded, decode_loader
from macasr.model.decoding import STOP_END, STOP_REPEAT, Stop
from macasr.model.speech_llm import SpeechLLM


@dataclasses.dataclass(frozen=True)
class Transcript:
    path: str
    text: str | None  # None when the file could not be transcribed
    error: str | None = None
    duration: float = 0.0  # seconds
    stop: Stop | None = None  # why decoding stopped: "end", or a guard: "repeat", "max_tokens"; None on error

    @property
    def guard_note(self) -> str | None:
        """One line for a transcript a guard cut (it may be a truncated loop), else None."""
        if self.stop is None or self.stop == STOP_END:
            return None
        why = "it repeated itself" if self.stop == STOP_REPEAT else "it reached the token cap"
        return f"{self.path}: decoding stopped because {why} (stop: {self.stop}); the transcript may be cut short or looped"


class Transcriber:
    """A trained model ready to turn audio files into text."""

    def __init__(self, model: SpeechLLM, cfg: Config, device: torch.device, precision: str) -> None:
        self.model, self.cfg, self.device, self.precision = model, cfg, device, precision

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto") -> Transcriber:
        from macasr.train.checkpoint import restore_model

        restored = restore_model(path, device)
        return cls(restored.model, restored.config, restored.device, restored.precision)

    def transcribe(self, paths: Sequence[str | Path], batch_size: int | None = None) -> list[Transcript]:
        """One Transcript per path, in order; errors are reported per file, never raised."""
        errors: dict[int, str] = {}
        cuts: list[MonoCut] = []
        for i, path in enumerate(map(str, paths)):
            try:
                cuts.append(file_cut(path, i))
            except DataError as e:
                errors[i] = str(e)
        decoded = Decoded()
        if cuts:
            loader = build_loader(CutDataset(self.model.encoder.featurizer),
                                  eval_sampler(cuts, batch_size or self.cfg.eval.batch_size))
            decoded = decode_loader(self.model, loader, decoding_options(self.cfg), self.device, self.precision)
        for cut in cuts:
            i = cut.custom["index"]
            if i not in decoded.hypotheses:
                audio = cut.recording.sources[0].source
                errors[i] = next((s for s in decoded.skipped if s.startswith(f"{audio}: ")), f"{paths[i]}: could not be decoded")
        durations = {cut.custom["index"]: cut.duration for cut in cuts}
        results = []
        for i, p in enumerate(map(str, paths)):
            if i in errors:
                results.append(Transcript(p, None, errors[i]))
                continue
            results.append(Transcript(p, decoded.hypotheses[i], None, round(durations[i], 3), decoded.stop_reasons[i]))
        return results


def file_cut(path: str, index: int) -> MonoCut:
    """A cut over a whole audio file (all channels, mixed to mono when read), numbered `index`;
    DataError naming the file when it is missing, has no readable header, or is empty."""
    if not Path(path).is_file():
        raise DataError(f"{path}: no such audio file")
    duration = audio_duration(path)  # DataError naming the file when the header cannot be read
    if duration <= 0:
        raise DataError(f"{path}: audio is empty")
    try:
        recording = Recording.from_file(Path(path).resolve(), recording_id=str(index))
    except Exception as e:  # noqa: BLE001 - lhotse's audio backends raise many types
        raise DataError(f"{path}: cannot read audio header ({' '.join(str(e).split())[:200]})") from None
    supervision = SupervisionSegment(id=str(index), recording_id=str(index), start=0.0, duration=recording.duration, text="")
    return MonoCut(id=path, start=0.0, duration=recording.duration, channel=recording.channel_ids,
                   recording=recording, supervisions=[supervision], custom={"index": index})
