"""`macasr eval --compare a.json b.json`: what changed between two eval reports, no model needed.

Per dataset found in both reports: WER a, WER b, the absolute change (percentage points) and
the relative change (of WER a), plus a pooled row over those datasets (total errors over total
reference words, as `overall` is computed). Utterances are matched by (dataset, id) through the
`.utterances.jsonl` beside each report; those whose word errors changed most are listed.

What cannot be compared is said, never hidden: a dataset in one report only, different
normalizers (the WERs then measure different things), utterances in one report only, or a
report without its per-utterance file. A missing or garbled report is a one-line MacasrError.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from macasr.errors import MacasrError
from macasr.evaluate.report import MISSING, utterances_path

TOP_CHANGES = 5  # utterances listed per dataset, most changed first
_COUNT_KEYS = ("substitutions", "deletions", "insertions", "ref_words")


@dataclass(frozen=True)
class LoadedReport:
    """A report read back: its datasets' summaries and, when its JSONL is beside it, its utterances."""

    path: Path
    normalizer: str
    datasets: dict[str, dict[str, Any]]
    utterances: dict[tuple[str, str], dict[str, Any]] | None  # (dataset, id) -> JSONL line; None: no JSONL
    checkpoint: str | None = None  # the checkpoint it scored, as `macasr eval` recorded it; None: not recorded


@dataclass(frozen=True)
class DatasetChange:
    """WER of one dataset (or of the pooled common datasets) in report a and in report b (fractions)."""

    name: str
    wer_a: float | None
    wer_b: float | None

    @property
    def absolute(self) -> float | None:
        """WER b - WER a (a fraction: 0.01 = one percentage point)."""
        return None if self.wer_a is None or self.wer_b is None else self.wer_b - self.wer_a

    @property
    def relative(self) -> float | None:
        """(WER b - WER a) / WER a; None when WER a is 0 or missing."""
        return None if self.absolute is None or not self.wer_a else self.absolute / self.wer_a


@dataclass(frozen=True)
class UtteranceChange:
    dataset: str
    id: str
    errors_a: int
    errors_b: int
    reference: str  # normalized, as scored
    hypothesis_a: str
    hypothesis_b: str

    @property
    def change(self) -> int:
        return self.errors_b - self.errors_a


@dataclass(frozen=True)
class Comparison:
    a: LoadedReport
    b: LoadedReport
    datasets: list[DatasetChange]  # the datasets of both reports, in report a's order
    pooled: DatasetChange  # over those datasets
    changed: dict[str, list[UtteranceChange]]  # per dataset: the most changed utterances, most first
    notes: list[str]  # what could not be compared, one line each


def _fail(path: Path, why: str) -> MacasrError:
    return MacasrError(f"report {path}: {why}")


def _read_json(path: Path) -> Any:
    if path.is_dir():
        raise _fail(path, "is a folder; give the .json file `macasr eval --report` wrote")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _fail(path, "no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise _fail(path, f"cannot be read ({e})") from None
    except json.JSONDecodeError as e:
        raise _fail(path, f"not JSON (line {e.lineno} column {e.colno}: {e.msg})") from None


def _check_dataset(path: Path, name: str, entry: Any) -> dict[str, Any]:
    """A dataset summary with a WER (a number or null) and whole error counts, or MacasrError."""
    if not isinstance(entry, dict):
        raise _fail(path, f"dataset `{name}` is not a table of numbers")
    wer = entry.get("wer")
    if "wer" not in entry or not (wer is None or (isinstance(wer, (int, float)) and not isinstance(wer, bool))):
        raise _fail(path, f"dataset `{name}`: `wer` must be a number or null, got {wer!r}")
    for key in _COUNT_KEYS:
        if not isinstance(entry.get(key), int) or isinstance(entry.get(key), bool) or entry[key] < 0:
            raise _fail(path, f"dataset `{name}`: `{key}` must be a whole number >= 0, got {entry.get(key)!r}")
    return entry


def _read_utterances(path: Path) -> dict[tuple[str, str], dict[str, Any]] | None:
    """The JSONL beside report `path`, keyed by (dataset, id); None when there is none."""
    jsonl = utterances_path(path)
    if not jsonl.is_file():
        return None
    lines: dict[tuple[str, str], dict[str, Any]] = {}
    with jsonl.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise MacasrError(f"{jsonl}:{number}: not JSON ({e.msg})") from None
            if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("dataset", "id")) \
                    or not isinstance(row.get("errors"), int):
                raise MacasrError(f"{jsonl}:{number}: expected an utterance with `dataset`, `id` and `errors`")
            lines[(row["dataset"], row["id"])] = row
    return lines


def load_report(path: str | Path) -> LoadedReport:
    """Read a `macasr eval --report` JSON (and the .utterances.jsonl beside it, when there);
    MacasrError naming the file and what is wrong with it."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), dict) or not isinstance(data.get("normalizer"), str):
        raise _fail(path, "not a `macasr eval --report` file (expected `normalizer` and a `datasets` table)")
    datasets = {name: _check_dataset(path, name, entry) for name, entry in data["datasets"].items()}
    checkpoint = data.get("checkpoint") if isinstance(data.get("checkpoint"), str) else None
    return LoadedReport(path, data["normalizer"], datasets, _read_utterances(path), checkpoint)


Counts = tuple[int, int]  # (word errors, reference words)


def _summary_counts(entry: dict[str, Any]) -> Counts:
    return entry["substitutions"] + entry["deletions"] + entry["insertions"], entry["ref_words"]


def _utterance_counts(report: LoadedReport, keys: list[tuple[str, str]]) -> Counts:
    """Word errors and reference words summed over some utterances of a report's JSONL."""
    lines = [report.utterances[key] for key in keys] if report.utterances is not None else []
    return sum(int(u["errors"]) for u in lines), sum(len(str(u.get("ref_norm", "")).split()) for u in lines)


def _total(counts: Iterable[Counts]) -> Counts:
    """Word errors and reference words summed over datasets (the pooled "overall" row)."""
    errors, words = 0, 0
    for e, w in counts:
        errors, words = errors + e, words + w
    return errors, words


def _wer(counts: Counts) -> float | None:
    return counts[0] / counts[1] if counts[1] else None


def _dataset_counts(a: LoadedReport, b: LoadedReport, name: str, notes: list[str]) -> tuple[Counts, Counts, str]:
    """(counts a, counts b, row name) for a dataset of both reports. When they scored different
    utterances, the WERs are taken over the utterances both scored (from the JSONLs), so a changed
    test set never shows as a changed model; without the JSONLs such a dataset is not compared."""
    count_a, count_b = a.datasets[name]["utterances"], b.datasets[name]["utterances"]
    if a.utterances is not None and b.utterances is not None:
        keys_a = [key for key in a.utterances if key[0] == name]
        keys_b = {key for key in b.utterances if key[0] == name}
        if set(keys_a) == keys_b:
            return _summary_counts(a.datasets[name]), _summary_counts(b.datasets[name]), name
        common = [key for key in keys_a if key in keys_b]
        notes.append(f"{name}: the reports scored different utterances ({len(set(keys_a) - keys_b)} only in {a.path}, "
                     f"{len(keys_b - set(keys_a))} only in {b.path}); its WERs are over the {len(common)} both scored")
        return _utterance_counts(a, common), _utterance_counts(b, common), f"{name} ({len(common)} common)"
    if count_a != count_b:
        notes.append(f"{name}: {count_a} utterances in {a.path} against {count_b} in {b.path}, and without both "
                     "per-utterance files the common ones are unknown: not compared")
        return (0, 0), (0, 0), f"{name} (different utterances)"
    return _summary_counts(a.datasets[name]), _summary_counts(b.datasets[name]), name


def _utterance_changes(a: LoadedReport, b: LoadedReport, names: list[str], top: int,
                       notes: list[str]) -> dict[str, list[UtteranceChange]]:
    """The `top` utterances per dataset whose word errors changed most (ties: report a's order)."""
    if a.utterances is None or b.utterances is None:
        missing = a if a.utterances is None else b
        notes.append(f"no per-utterance file {utterances_path(missing.path)} beside {missing.path}: "
                     "changed utterances not shown")
        return {}
    changed = {}
    for name in names:
        ids_a = [key for key in a.utterances if key[0] == name]
        ids_b = {key for key in b.utterances if key[0] == name}
        pairs = [(a.utterances[key], b.utterances[key]) for key in ids_a if key in ids_b]
        changes = [UtteranceChange(name, ua["id"], ua["errors"], ub["errors"], str(ua.get("ref_norm", "")),
                                   str(ua.get("hyp_norm", "")), str(ub.get("hyp_norm", ""))) for ua, ub in pairs]
        changes = sorted((c for c in changes if c.change), key=lambda c: -abs(c.change))
        changed[name] = changes[:top]
    return changed


def compare_reports(a: LoadedReport, b: LoadedReport, top: int = TOP_CHANGES) -> Comparison:
    """Compare two loaded reports; MacasrError when they share no dataset."""
    common = [name for name in a.datasets if name in b.datasets]
    notes = []
    if a.normalizer != b.normalizer:
        notes.append(f"normalizers differ: {a.path} used `{a.normalizer}`, {b.path} `{b.normalizer}`; "
                     "their WERs are not comparable")
    for this, other in ((a, b), (b, a)):
        alone = [name for name in this.datasets if name not in other.datasets]
        if alone:
            notes.append(f"only in {this.path}: {', '.join(alone)} (not compared)")
    if not common:
        raise MacasrError(f"reports {a.path} and {b.path} share no dataset ({a.path}: {', '.join(a.datasets) or 'none'}; "
                          f"{b.path}: {', '.join(b.datasets) or 'none'})")
    counted = [_dataset_counts(a, b, name, notes) for name in common]
    datasets = [DatasetChange(row, _wer(ca), _wer(cb)) for ca, cb, row in counted]
    pooled = DatasetChange("overall", _wer(_total(ca for ca, _, _ in counted)), _wer(_total(cb for _, cb, _ in counted)))
    changed = _utterance_changes(a, b, common, top, notes)
    return Comparison(a, b, datasets, pooled, changed, notes)


def _percent(rate: float | None, sign: bool = False) -> str:
    return MISSING if rate is None else f"{100.0 * rate:{'+' if sign else ''}.2f}"


def comparison_table(comparison: Comparison) -> Table:
    """WER a, WER b, absolute (points) and relative change per dataset, plus the pooled row."""
    a, b = comparison.a.path, comparison.b.path
    caption = f"a: {a} ({comparison.a.normalizer}) · b: {b} ({comparison.b.normalizer}) · Δ: b - a in points; rel: of WER a"
    table = Table(title="WER change", caption=Text(caption))
    table.add_column("Dataset", overflow="fold")
    for header in ("WER a %", "WER b %", "Δ points", "Δ rel %"):
        table.add_column(header, justify="right")
    rows = comparison.datasets + ([comparison.pooled] if len(comparison.datasets) > 1 else [])
    for index, row in enumerate(rows):
        table.add_row(Text(row.name), _percent(row.wer_a), _percent(row.wer_b), _percent(row.absolute, sign=True),
                      _percent(row.relative, sign=True), end_section=len(rows) > 1 and index == len(rows) - 2)
    return table


def changes_table(name: str, changes: list[UtteranceChange]) -> Table:
    """The utterances of one dataset whose word errors changed most, normalized text (as scored)."""
    table = Table(title=Text(f"{name}: most changed utterances"), show_lines=True)
    table.add_column("ID", no_wrap=True)
    table.add_column("Errors a→b", justify="right")
    table.add_column("Reference", ratio=1)
    table.add_column("Hypothesis a", ratio=1)
    table.add_column("Hypothesis b", ratio=1)
    for c in changes:
        table.add_row(Text(c.id), f"{c.errors_a}→{c.errors_b}", Text(c.reference), Text(c.hypothesis_a), Text(c.hypothesis_b))
    return table
