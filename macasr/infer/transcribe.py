"""Transcribe audio with a trained checkpoint; the `Transcriber` public API.

Inputs are planned one at a time (`macasr.infer.segment.plan`: audio without speech is not
decoded; audio longer than `[eval] max_segment_seconds` is split at pauses), and their segments
decoded in batches of `[eval] batch_size`; each transcript is yielded once all its segments are
decoded, in input order, so output can be written while later inputs are still waiting. An input
that is missing, empty or undecodable gets an error naming it and why, and the others are still
transcribed. Each transcript says why decoding stopped, so a loop cut by a guard is never passed
off as a finished transcript.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from lhotse.cut import Cut
from lhotse.utils import fastcopy

from macasr.config import Config
from macasr.data.loader import ClipProblem, CutDataset, audio_name, bad_clip, build_loader, eval_sampler
from macasr.evaluate.run import decoding_options
from macasr.infer.decode import Decoded, decode_loader
from macasr.infer.inputs import Source, api_sources, file_cut  # noqa: F401 - file_cut: also imported from here
from macasr.infer.segment import SileroVAD, Span, load_vad, plan
from macasr.model.decoding import STOP_END, STOP_REPEAT, Stop
from macasr.model.speech_llm import SpeechLLM


@dataclasses.dataclass(frozen=True)
class Segment:
    """A stretch of the input decoded on its own: seconds from the input's start, its text and why its decoding stopped."""

    start: float
    end: float
    text: str
    stop: Stop


@dataclasses.dataclass(frozen=True)
class Transcript:
    path: str
    text: str | None  # None when the file could not be transcribed; "" when the VAD found no speech
    error: str | None = None
    duration: float = 0.0  # seconds
    stop: Stop | None = None  # why decoding stopped: "end", or a guard: "repeat", "max_tokens" (the first segment a guard cut); None when nothing was decoded
    segments: tuple[Segment, ...] = ()  # in time order; empty when nothing was decoded (no speech, or an error)

    @property
    def guard_note(self) -> str | None:
        """One line for a transcript a guard cut (it may be a truncated loop), else None."""
        if self.stop is None or self.stop == STOP_END:
            return None
        why = "it repeated itself" if self.stop == STOP_REPEAT else "it reached the token cap"
        return f"{self.path}: decoding stopped because {why} (stop: {self.stop}); the transcript may be cut short or looped"


@dataclasses.dataclass
class _Planned:
    source: Source
    spans: list[Span]
    error: str | None = None


class Transcriber:
    """A trained model ready to turn audio into text. `[eval] vad`, `max_segment_seconds`,
    `batch_size` and the decoding keys of `cfg` say how."""

    def __init__(self, model: SpeechLLM, cfg: Config, device: torch.device, precision: str) -> None:
        self.model, self.cfg, self.device, self.precision = model, cfg, device, precision
        self._vad: SileroVAD | None = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto") -> Transcriber:
        from macasr.train.checkpoint import restore_model

        restored = restore_model(path, device)
        return cls(restored.model, restored.config, restored.device, restored.precision)

    def transcribe(self, inputs: str | Path | Sequence[str | Path | tuple[Any, int]], batch_size: int | None = None) -> list[Transcript]:
        """One Transcript per input, in order: an audio file path, or a (samples, sample rate) pair
        (samples 1-D, or 2-D (samples, channels) or (channels, samples); any rate); one path alone
        is one input. Errors are reported per input, never raised."""
        return list(self.stream(api_sources(inputs), batch_size))

    def stream(self, sources: Iterable[Source], batch_size: int | None = None,
               on_progress: Callable[[float], None] | None = None) -> Iterator[Transcript]:
        """One Transcript per source, in order, each as soon as its segments are decoded: inputs
        are gathered until they hold a batch of segments, which is then decoded.
        `on_progress(seconds)` is told the seconds of input audio dealt with, as they are.
        `sources` come from `macasr.infer.inputs` (`expand` for CLI inputs, `api_sources` for
        paths and arrays); TypeError for anything else."""
        size = batch_size or self.cfg.eval.batch_size
        group: list[_Planned] = []
        for source in sources:
            if not isinstance(source, Source):
                raise TypeError(f"Transcriber.stream takes Source objects (macasr.infer.inputs.api_sources(paths or "
                                f"arrays) makes them), got {type(source).__name__}; Transcriber.transcribe takes paths")
            group.append(self._plan(source))
            if not group[-1].spans and on_progress is not None:
                on_progress(source.duration)  # nothing to decode: done
            segments = sum(len(p.spans) for p in group)
            if segments >= size or segments == 0:  # a batch's worth, or only inputs with nothing to decode
                yield from self._decode(group, size, on_progress)
                group = []
        yield from self._decode(group, size, on_progress)

    def _plan(self, source: Source) -> _Planned:
        if source.cut is None:
            return _Planned(source, [], source.error)
        vad = None
        if self.cfg.eval.vad:
            self._vad = self._vad or load_vad()
            vad = self._vad
        try:
            spans = plan(source.cut, self.cfg.eval.max_segment_seconds, vad, int(getattr(self.model.encoder.featurizer, "n_fft", 0)))
        except ClipProblem as e:
            return _Planned(source, [], bad_clip(source.cut, str(e)).line)
        return _Planned(source, spans)

    def _decode(self, group: list[_Planned], size: int, on_progress: Callable[[float], None] | None) -> Iterator[Transcript]:
        """Decode the segments of `group` together → its transcripts, in order."""
        spans = [(p.source.cut, span) for p in group for span in p.spans]
        cuts = [_segment_cut(cut, span, n) for n, (cut, span) in enumerate(spans)]
        decoded = Decoded()
        if cuts:
            on_batch = (lambda batch: on_progress(sum(batch.durations))) if on_progress is not None else None
            loader = build_loader(CutDataset(self.model.encoder.featurizer), eval_sampler(cuts, size))
            decoded = decode_loader(self.model, loader, decoding_options(self.cfg), self.device, self.precision, on_batch)
        first = 0
        for p in group:
            numbers = range(first, first + len(p.spans))
            first += len(p.spans)
            yield self._transcript(p, decoded, numbers)
            if p.spans and on_progress is not None:
                on_progress(p.source.duration - sum(s.duration for s in p.spans))  # the silence left out

    def _transcript(self, p: _Planned, decoded: Decoded, numbers: range) -> Transcript:
        name = p.source.name
        if p.error is not None:
            return Transcript(name, None, p.error)
        duration = round(p.source.duration, 3)
        missing = [n for n in numbers if n not in decoded.hypotheses]
        if missing:
            audio = audio_name(p.source.cut)
            error = next((s for s in decoded.skipped if s.startswith(f"{audio}: ")), f"{name}: could not be decoded")
            return Transcript(name, None, error)
        segments = tuple(Segment(span.start, span.end, decoded.hypotheses[n], decoded.stop_reasons[n])
                         for span, n in zip(p.spans, numbers))
        if not segments:
            return Transcript(name, "", None, duration)  # no speech: nothing decoded
        text = " ".join(s.text.strip() for s in segments if s.text.strip())
        stop = next((s.stop for s in segments if s.stop != STOP_END), STOP_END)
        return Transcript(name, text, None, duration, stop, segments)


def _segment_cut(cut: Cut, span: Span, number: int) -> Cut:
    """The part of `cut` a span covers (the cut itself when it covers all of it), numbered `number`."""
    if span.start > 0 or span.end < cut.duration:
        cut = cut.truncate(offset=span.start, duration=min(span.end, cut.duration) - span.start, preserve_id=True)
    return fastcopy(cut, id=f"{cut.id}#{number}", custom={**(cut.custom or {}), "index": number})
