"""Transcripts as text: plain, a JSON object (segments with times; failed files with their error),
SubRip (.srt) and WebVTT (.vtt) subtitles, one cue per decoded segment."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from macasr.infer.transcribe import Transcript

FORMATS = ("txt", "json", "srt", "vtt")


def as_json(t: Transcript, cut_id: str | None = None) -> dict[str, Any]:
    """One object per input: audio (and id for a manifest row), text, duration, stop, segments
    (start, end seconds, text, stop), or, for an input that failed, text null and its error."""
    head: dict[str, Any] = {"audio": t.path} | ({"id": cut_id} if cut_id is not None else {})
    if t.error is not None:
        return head | {"text": None, "error": t.error}
    segments = [{"start": s.start, "end": s.end, "text": s.text, "stop": s.stop} for s in t.segments]
    return head | {"text": t.text, "duration": t.duration, "stop": t.stop, "segments": segments}


def _timestamp(seconds: float, separator: str) -> str:
    """HH:MM:SS,mmm (SubRip) or HH:MM:SS.mmm (WebVTT)."""
    millis = max(0, round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _cues(t: Transcript, separator: str) -> list[str]:
    """A cue per segment with text ("-->" in a text would end the cue's timing line early)."""
    return [f"{_timestamp(s.start, separator)} --> {_timestamp(s.end, separator)}\n{' '.join(s.text.replace('-->', '->').split())}\n"
            for s in t.segments if s.text.strip()]


def as_srt(t: Transcript) -> str:
    return "\n".join(f"{number}\n{cue}" for number, cue in enumerate(_cues(t, ","), start=1))


def as_vtt(t: Transcript) -> str:
    return "\n".join(["WEBVTT\n", *_cues(t, ".")])


def render(t: Transcript, fmt: str, cut_id: str | None = None) -> str:
    """The whole output file for one successful transcript in `fmt` (json: one line)."""
    if fmt == "json":
        return json.dumps(as_json(t, cut_id), ensure_ascii=False) + "\n"
    if fmt == "srt":
        return as_srt(t)
    if fmt == "vtt":
        return as_vtt(t)
    return (t.text or "") + "\n"
