"""JSON Lines manifests: one utterance per line, `{"audio", "text", "duration"}` (+ `id`, `offset`).

Relative audio paths are resolved from the manifest's folder, so a data folder can be moved
whole. Every field of every line is checked when the manifest is read (`entry_problems`), and all
problems of a file are reported at once, each as `FILE:LINE: what is wrong`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from macasr.audio import seconds_problem
from macasr.errors import DataError

REQUIRED = ("audio", "text", "duration")
MAX_PROBLEMS_SHOWN = 20  # lines of one DataError; the rest are counted
_MAX_VALUE_CHARS = 60  # a quoted value longer than this is cut with "..."


@dataclasses.dataclass(frozen=True)
class Utterance:
    id: str
    audio: str  # absolute path
    text: str
    duration: float  # seconds
    offset: float | None = None  # seconds into the file of a segment `duration` long; None: the whole file


def show_value(value: object) -> str:
    """A field's value as it would appear in the JSON line (NaN, "abc", null), cut if long."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 3] + "..."


def _text_problem(value: object, *, path: bool) -> str | None:
    if path:
        ok = isinstance(value, str) and value.strip() != ""
        return None if ok else "expected the audio file's path as a non-empty string"
    return None if isinstance(value, str) else "expected the transcript as a string"


def _id_problem(value: object) -> str | None:
    ok = (isinstance(value, str) and value.strip() != "") or (isinstance(value, int) and not isinstance(value, bool))
    return None if ok else "expected a non-empty string (or an integer)"


def entry_problems(entry: Mapping[str, object]) -> list[str]:
    """Every problem with one utterance's fields, each "`key` = VALUE: expected ..." or
    "missing key ..."; empty when the entry is usable. Independent of where entries come from."""
    checks = {
        "audio": lambda v: _text_problem(v, path=True),
        "text": lambda v: _text_problem(v, path=False),
        "duration": lambda v: seconds_problem(v, zero_ok=False),
        "offset": lambda v: seconds_problem(v, zero_ok=True),
        "id": _id_problem,
    }
    problems = [f"missing key `{key}` (expected {', '.join(REQUIRED)})" for key in REQUIRED if key not in entry]
    for key, check in checks.items():
        if key in entry and (problem := check(entry[key])):
            problems.append(f"`{key}` = {show_value(entry[key])}: {problem}")
    return problems


def _utterance(entry: Mapping[str, object], folder: Path, default_id: str) -> Utterance:
    """An entry with no `entry_problems` → Utterance, its audio path resolved from `folder`."""
    audio = Path(str(entry["audio"])).expanduser()
    return Utterance(
        id=str(entry.get("id", default_id)), audio=str(audio if audio.is_absolute() else folder / audio),
        text=str(entry["text"]), duration=float(entry["duration"]),  # type: ignore[arg-type]
        offset=float(entry["offset"]) if "offset" in entry else None,  # type: ignore[arg-type]
    )


def problems_error(problems: list[str], source: str) -> DataError:
    """One DataError listing up to MAX_PROBLEMS_SHOWN problem lines and counting the rest."""
    shown = problems[:MAX_PROBLEMS_SHOWN]
    if len(problems) > len(shown):
        shown.append(f"... and {len(problems) - len(shown):,} more problems in {source}")
    return DataError("\n".join(shown))


def load_manifest(path: str | Path) -> list[Utterance]:
    """All utterances of one manifest; DataError listing every bad line (and duplicate id)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a BOM is not part of line 1
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise DataError(f"{path}: cannot read manifest ({reason})") from None
    folder = path.resolve().parent
    utterances: list[Utterance] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}  # id → line it was first seen on
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{where}: not valid JSON ({e.msg})")
            continue
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a JSON object, got {type(entry).__name__}")
            continue
        if bad := entry_problems(entry):
            problems += [f"{where}: {p}" for p in bad]
            continue
        u = _utterance(entry, folder, f"{path.stem}-{number:06d}")
        if u.id in first_line:
            given = "" if "id" in entry else " (this line's default id)"
            problems.append(f"{where}: `id` = {show_value(u.id)}{given}: expected an id used once "
                            f"in the manifest (line {first_line[u.id]} has it too)")
            continue
        first_line[u.id] = number
        utterances.append(u)
    if problems:
        raise problems_error(problems, str(path))
    if not utterances:
        raise DataError(f"{path}: manifest has no utterances")
    return utterances


def load_manifests(paths: Iterable[str | Path]) -> list[Utterance]:
    """The utterances of several manifests, in order (ids need only be unique per manifest)."""
    return [u for p in paths for u in load_manifest(p)]


def write_manifest(path: str | Path, rows: Iterable[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
