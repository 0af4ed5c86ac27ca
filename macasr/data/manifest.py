"""JSON Lines manifests: one utterance per line, `{"audio", "text", "duration"}` (+ `id`, `offset`).

Relative audio paths are resolved from the manifest's folder, so a data folder can be moved
whole. Every problem names the file and line.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path

from macasr.errors import DataError


@dataclasses.dataclass(frozen=True)
class Utterance:
    id: str
    audio: str  # absolute path
    text: str
    duration: float  # seconds
    offset: float = 0.0  # seconds into the file (segments of long recordings)


def _parse_line(obj: object, where: str, folder: Path, default_id: str) -> Utterance:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key, kind in (("audio", str), ("text", str), ("duration", (int, float))):
        if key not in obj:
            raise DataError(f"{where}: missing key `{key}` (expected audio, text, duration)")
        if not isinstance(obj[key], kind) or isinstance(obj[key], bool):
            raise DataError(f"{where}: `{key}` has the wrong type ({type(obj[key]).__name__})")
    if obj["duration"] <= 0:
        raise DataError(f"{where}: `duration` must be positive seconds, got {obj['duration']}")
    audio = Path(obj["audio"]).expanduser()
    audio = audio if audio.is_absolute() else folder / audio
    return Utterance(
        id=str(obj.get("id", default_id)), audio=str(audio), text=obj["text"],
        duration=float(obj["duration"]), offset=float(obj.get("offset", 0.0)),
    )


def load_manifest(path: str | Path) -> list[Utterance]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(f"{path}: cannot read manifest ({e.strerror or e})") from None
    folder = path.resolve().parent
    utterances = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        utterances.append(_parse_line(obj, f"{path}:{number}", folder, f"{path.stem}-{number:06d}"))
    if not utterances:
        raise DataError(f"{path}: manifest has no utterances")
    return utterances


def load_manifests(paths: Iterable[str | Path]) -> list[Utterance]:
    return [u for p in paths for u in load_manifest(p)]


def write_manifest(path: str | Path, rows: Iterable[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
