"""Presenting scores: rich tables for the terminal, JSON + JSONL files for later comparison.

The JSON report holds the aggregate numbers (rates as fractions, plus the raw counts they come
from, so that reports can be pooled later); the JSONL next to it holds every utterance, for
error analysis. Both are written atomically, the JSONL first, so that a JSON report on disk
always has its complete JSONL beside it.

A report must never be lost after hours of decoding: `check_report_path` is meant to run before
decoding starts, and writing never fails on a value that JSON cannot hold (a non-finite number
becomes null, a lone surrogate in a transcript is written as its JSON escape).
A dataset without a WER (see `DatasetScore.problem`) shows "n/a" in tables and null in JSON; so
does a rate without a denominator (`rates_table`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from macasr.errors import MacasrError
from macasr.evaluate.loops import LOOP_MAX_WORDS, LOOP_MIN_REPEATS
from macasr.evaluate.wer import DatasetScore, overall
from macasr.fileio import write_atomic

_RESERVED_KEYS = ("normalizer", "datasets", "overall")
MISSING = "n/a"  # shown for a rate that does not exist (no utterance, no reference word)


def _rate(s: DatasetScore, rate: float) -> str:
    """A percentage, or n/a when the dataset has no WER (never 0.00 % over nothing)."""
    return MISSING if s.problem else f"{100.0 * rate:.2f}"


def _percent(rate: float | None) -> str:
    return MISSING if rate is None else f"{100.0 * rate:.2f}"


def _number(value: float | None, digits: int) -> str:
    return MISSING if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _hours(hours: float) -> str:
    return f"{hours:.2f}" if math.isfinite(hours) else MISSING


def _check_names(scores: Sequence[DatasetScore]) -> None:
    """Duplicate names would silently overwrite each other in the report dict."""
    names = [s.name for s in scores]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"dataset names must be unique, repeated: {', '.join(duplicates)}")


def _cells(s: DatasetScore, skip: bool, empty: bool, guard: bool) -> list[str | Text]:
    """One table row; the Skip, Empty and Guard cells only when those columns are shown."""
    c = s.counts
    counts = [str(len(s.skipped))] * skip + [str(s.empty_references)] * empty + [str(s.guard_stops)] * guard
    return [
        Text(s.name),  # Text, not a str: a name like "[dev]" must not be read as markup
        str(s.utterances), *counts, _hours(s.hours), _rate(s, s.wer), _rate(s, s.cer),
        str(c.substitutions), str(c.deletions), str(c.insertions),
    ]


def wer_table(scores: Sequence[DatasetScore], normalizer: str, title: str = "WER") -> Table:
    """One row per dataset, plus a pooled "overall" row when there are several.

    "Utts" counts the scored utterances. The caption always gives the total of clips skipped as
    unreadable and of references empty after normalization (their hypothesis words count as
    insertions); a "Skip" or "Empty" column gives them per dataset when any is non-zero (shown
    always, they would push the table past 80 columns). A "Guard" column, shown likewise, counts
    hypotheses a decoding guard cut (a loop or the token cap) rather than the end token.
    """
    rows = list(scores)
    if len(rows) > 1:
        rows.append(overall(rows))
    total = overall(scores)
    skip, empty, guard = bool(total.skipped), bool(total.empty_references), bool(total.guard_stops)
    caption = f"normalizer: {normalizer} · skipped clips: {len(total.skipped)} · empty references: {total.empty_references}"
    caption += f" · cut by a decoding guard: {total.guard_stops}" if guard else ""
    table = Table(title=title, caption=Text(caption))
    table.add_column("Dataset", overflow="fold")  # a long name wraps rather than losing its end
    headers = ["Utts", *["Skip"] * skip, *["Empty"] * empty, *["Guard"] * guard, "Hours", "WER %", "CER %", "Sub", "Del", "Ins"]
    for header in headers:
        table.add_column(header, justify="right")
    for index, s in enumerate(rows):
        table.add_row(*_cells(s, skip, empty, guard), end_section=len(rows) > 1 and index == len(rows) - 2)
    return table


RATES_CAPTION = (  # the definitions are in docs/evaluation.md
    f"Loops: a unit of 1-{LOOP_MAX_WORDS} words {LOOP_MIN_REPEATS}× in a row, or a repeat-guard stop · Empty out: no "
    "words for a non-empty reference · No-speech out: words on clips the VAD found silent (n/a: none, or no VAD) · "
    "Hyp/Ref: words · RTFx: audio s per decoding s"
)


def rates_table(scores: Sequence[DatasetScore], title: str = "Degenerate outputs and speed") -> Table:
    """The rates that tell why a WER is bad, one row per dataset (plus "overall" when several);
    "n/a" where a rate has no denominator. Separate from `wer_table` so both fit 80 columns."""
    rows = list(scores)
    if len(rows) > 1:
        rows.append(overall(rows))
    table = Table(title=title, caption=Text(RATES_CAPTION), caption_justify="left")
    table.add_column("Dataset", overflow="fold")
    for header in ("Loops %", "Empty out %", "No-speech out %", "Hyp/Ref", "RTFx"):
        table.add_column(header, justify="right")
    for index, s in enumerate(rows):
        table.add_row(
            Text(s.name), _percent(s.loop_rate), _percent(s.empty_output_rate), _percent(s.no_speech_output_rate),
            _number(s.length_ratio, 3), _number(s.rtfx, 1), end_section=len(rows) > 1 and index == len(rows) - 2,
        )
    return table


def _summary(s: DatasetScore) -> dict[str, Any]:
    """Rates are null when the dataset has no WER (or, for the others, no denominator); `skipped`
    counts clips that were not scored. `decode_seconds` and `rtfx` are measurements that differ
    from run to run; everything else is a result."""
    c = s.counts
    return {
        "wer": None if s.problem else s.wer,
        "cer": None if s.problem else s.cer,
        "utterances": s.utterances,
        "skipped": len(s.skipped),
        "empty_references": s.empty_references,
        "guard_stops": s.guard_stops,
        "hours": s.hours,
        "substitutions": c.substitutions,
        "deletions": c.deletions,
        "insertions": c.insertions,
        "ref_words": c.ref_words,
        "hyp_words": c.hyp_words,
        "length_ratio": s.length_ratio,
        "loops": s.loops,
        "loop_rate": s.loop_rate,
        "empty_outputs": s.empty_outputs,
        "empty_output_rate": s.empty_output_rate,
        "no_speech_clips": s.no_speech_clips,
        "no_speech_outputs": s.no_speech_outputs,
        "no_speech_output_rate": s.no_speech_output_rate,
        "decode_seconds": s.decode_seconds,
        "rtfx": s.rtfx,
    }


def report_dict(
    scores: Sequence[DatasetScore], normalizer: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Aggregate numbers as plain JSON-able data; "overall" is always present (pooled counts)."""
    _check_names(scores)
    extra = dict(extra or {})
    clashes = [k for k in _RESERVED_KEYS if k in extra]
    if clashes:
        raise ValueError(f"extra report keys clash with reserved keys: {', '.join(clashes)}")
    return _finite(
        {
            "normalizer": normalizer,
            "datasets": {s.name: _dataset_entry(s) for s in scores},
            "overall": _summary(overall(scores)),
            **extra,
        }
    )


def _dataset_entry(s: DatasetScore) -> dict[str, Any]:
    """A dataset's summary plus the lines of its skipped and suspicious clips."""
    return {**_summary(s), "skipped_clips": list(s.skipped), "warnings": list(s.warnings)}


def _finite(value: Any) -> Any:
    """`value` with every NaN or infinity replaced by None: JSON has no such numbers, and a
    report that fails to serialize after decoding loses all of the decoding."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_text(value: Any, **kwargs: Any) -> str:
    """JSON text that UTF-8 can always encode: a lone surrogate (valid in a JSON manifest, so
    possible in a transcript) becomes its JSON escape, which reads back as the same string."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, **kwargs)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _write_atomic(path: Path, text: str) -> None:
    """Readers never see half a file; the file gets the usual umask-based mode (see macasr.fileio)."""
    write_atomic(path, text)


def _utterance_lines(scores: Iterable[DatasetScore]) -> str:
    lines = [
        _json_text(
            {
                "dataset": s.name,
                "id": u.id,
                "reference": u.reference,
                "hypothesis": u.hypothesis,
                "ref_norm": u.ref_norm,
                "hyp_norm": u.hyp_norm,
                "errors": u.errors,
                "alignment": [dataclasses.asdict(span) for span in u.alignment],
                "stop": u.stop,
                "loop": u.loop,
                "no_speech": u.no_speech,
            }
        )
        for s in scores
        for u in s.per_utterance
    ]
    return "".join(line + "\n" for line in lines)


def utterances_path(path: Path) -> Path:
    """Where the per-utterance JSONL of the report at `path` goes: <stem>.utterances.jsonl."""
    return path.with_name(f"{path.stem}.utterances.jsonl")


def check_report_path(path: Path, inputs: Iterable[Path] = ()) -> Path:
    """Refuse a report path that cannot be written, before any decoding is spent on it.

    Checks the report and its .utterances.jsonl: neither may be a folder or one of `inputs`
    (the manifests being scored, the checkpoint, the config), and the nearest existing folder above them must be writable
    (missing folders are created only when the report is written). Raises MacasrError.
    """
    path = Path(path)
    inputs = {Path(p).resolve() for p in inputs}
    for target in (path, utterances_path(path)):
        if target.is_dir():
            shown = f"; give a file name such as {path / 'eval.json'}" if target == path else ", in the way of the per-utterance file; give another report name"
            raise MacasrError(f"report {path}: {target} is a folder{shown}")
        if target.resolve() in inputs:
            raise MacasrError(f"report {path}: {target} is one of this command's inputs (a manifest, the checkpoint "
                              "or the config) and would be overwritten; give another file name")
    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise MacasrError(f"report {path}: {folder} is not a folder, so the report cannot be written under it")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise MacasrError(f"report {path}: cannot write in {folder} (permission denied)")
    try:  # a real write: os.access says yes to root, on read-only mounts and in /proc
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise MacasrError(f"report {path}: cannot write in {folder} ({e.strerror or e})") from None
    return path


def write_report(
    path: Path,
    scores: Sequence[DatasetScore],
    normalizer: str,
    extra: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write the JSON report and its per-utterance JSONL; returns (json_path, jsonl_path)."""
    path = Path(path)
    # Serialize before touching the disk, so an unserializable `extra` leaves nothing behind.
    report = _json_text(report_dict(scores, normalizer, extra), indent=2)
    utterances = _utterance_lines(scores)
    jsonl_path = utterances_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(jsonl_path, utterances)
    _write_atomic(path, report + "\n")
    return path, jsonl_path


def examples_table(score: DatasetScore, n: int = 5) -> Table:
    """The `n` worst utterances (most word errors; ties keep dataset order), normalized text.

    Worst-first because the point is to see what goes wrong; normalized text because that is
    what was scored, so every difference shown is an error counted.
    """
    worst = sorted(score.per_utterance, key=lambda u: -u.errors)[: max(n, 0)]
    table = Table(
        title=Text(f"{score.name}: worst {len(worst)} of {score.utterances}"),
        show_lines=True,
    )
    table.add_column("ID", no_wrap=True)
    table.add_column("Errors", justify="right")
    table.add_column("Reference", ratio=1)
    table.add_column("Hypothesis", ratio=1)
    for u in worst:
        table.add_row(Text(u.id), str(u.errors), Text(u.ref_norm), Text(u.hyp_norm))
    return table
