"""Presenting scores: rich tables for the terminal, JSON + JSONL files for later comparison.

The JSON report holds the aggregate numbers (rates as fractions, plus the raw counts they come
from, so that reports can be pooled later); the JSONL next to it holds every utterance, for
error analysis. Both are written atomically, the JSONL first, so that a JSON report on disk
always has its complete JSONL beside it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from macasr.evaluate.wer import DatasetScore, overall
from macasr.fileio import write_atomic

_RESERVED_KEYS = ("normalizer", "datasets", "overall")


def _pct(rate: float) -> str:
    return f"{100.0 * rate:.2f}"


def _check_names(scores: Sequence[DatasetScore]) -> None:
    """Duplicate names would silently overwrite each other in the report dict."""
    names = [s.name for s in scores]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"dataset names must be unique, repeated: {', '.join(duplicates)}")


def wer_table(scores: Sequence[DatasetScore], normalizer: str, title: str = "WER") -> Table:
    """One row per dataset, plus a pooled "overall" row when there are several."""
    table = Table(title=title, caption=f"normalizer: {normalizer}")
    table.add_column("Dataset")
    for header in ("Utts", "Hours", "WER %", "CER %", "Sub", "Del", "Ins"):
        table.add_column(header, justify="right")
    rows = list(scores)
    if len(rows) > 1:
        rows.append(overall(rows))
    for index, s in enumerate(rows):
        c = s.counts
        table.add_row(
            Text(s.name),  # Text, not a str: a name like "[dev]" must not be read as markup
            str(s.utterances),
            f"{s.hours:.2f}",
            _pct(s.wer),
            _pct(s.cer),
            str(c.substitutions),
            str(c.deletions),
            str(c.insertions),
            end_section=len(rows) > 1 and index == len(rows) - 2,
        )
    return table


def _summary(s: DatasetScore) -> dict[str, Any]:
    c = s.counts
    return {
        "wer": s.wer,
        "cer": s.cer,
        "utterances": s.utterances,
        "hours": s.hours,
        "substitutions": c.substitutions,
        "deletions": c.deletions,
        "insertions": c.insertions,
        "ref_words": c.ref_words,
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
    return {
        "normalizer": normalizer,
        "datasets": {s.name: _summary(s) for s in scores},
        "overall": _summary(overall(scores)),
        **extra,
    }


def _write_atomic(path: Path, text: str) -> None:
    """Readers never see half a file; the file gets the usual umask-based mode (see macasr.fileio)."""
    write_atomic(path, text)


def _utterance_lines(scores: Iterable[DatasetScore]) -> str:
    lines = [
        json.dumps(
            {
                "dataset": s.name,
                "id": u.id,
                "reference": u.reference,
                "hypothesis": u.hypothesis,
                "ref_norm": u.ref_norm,
                "hyp_norm": u.hyp_norm,
                "errors": u.errors,
            },
            ensure_ascii=False,
        )
        for s in scores
        for u in s.per_utterance
    ]
    return "".join(line + "\n" for line in lines)


def utterances_path(path: Path) -> Path:
    """Where the per-utterance JSONL of the report at `path` goes: <stem>.utterances.jsonl."""
    return path.with_name(f"{path.stem}.utterances.jsonl")


def write_report(
    path: Path,
    scores: Sequence[DatasetScore],
    normalizer: str,
    extra: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write the JSON report and its per-utterance JSONL; returns (json_path, jsonl_path)."""
    path = Path(path)
    # Serialize before touching the disk, so an unserializable `extra` leaves nothing behind.
    report = json.dumps(
        report_dict(scores, normalizer, extra), indent=2, ensure_ascii=False, allow_nan=False
    )
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
