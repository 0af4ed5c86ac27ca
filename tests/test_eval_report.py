"""Reports and tables: skipped clips and empty references counted, no WER over nothing, and a
report that is checked before decoding and always written after it."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from rich.console import Console

from macasr.errors import MacasrError
from macasr.evaluate.report import check_report_path, report_dict, wer_table, write_report
from macasr.evaluate.wer import overall, score


def _render(renderable: object) -> str:
    console = Console(record=True, width=160)
    console.print(renderable)
    return console.export_text()


def _row(text: str, name: str) -> list[str]:
    """The cells of the table row whose first cell is `name`."""
    for line in text.splitlines():
        cells = [c.strip() for c in re.split("[│┃]", line.strip("│┃ "))]
        if cells[0] == name:
            return cells
    raise AssertionError(f"no row {name!r} in:\n{text}")


def _cells(text: str, name: str, *headers: str) -> list[str]:
    """The cells under `headers` in the row of dataset `name`."""
    columns = _row(text, "Dataset")
    row = _row(text, name)
    return [row[columns.index(h)] for h in headers]


def _scores() -> list:
    good = score("good", ["g1", "g2"], ["Hmm... uh, um!", "the cat"], ["hello", "the cat"], [1.0, 2.0], "english",
                 skipped=["/data/g3.wav: no such audio file"], warnings=["/data/g2.wav: read 1.0 s, manifest says 2.0 s"])
    unreadable = score("unreadable", [], [], [], [], "english", skipped=["/data/u1.wav: no such audio file", "/data/u2.wav: cannot read"])
    return [good, unreadable]


def test_table_counts_skipped_clips_and_empty_references_per_dataset_and_overall() -> None:
    text = _render(wer_table(_scores(), "english"))
    assert _row(text, "Dataset")[1:4] == ["Utts", "Skip", "Empty"]
    assert _row(text, "good")[1:4] == ["2", "1", "1"]
    assert _row(text, "unreadable")[1:4] == ["0", "2", "0"]
    assert _row(text, "overall")[1:4] == ["2", "3", "1"]
    assert "normalizer: english · skipped clips: 3 · empty references: 1" in text


def test_table_shows_skip_and_empty_columns_only_when_there_is_something_to_count() -> None:
    clean = score("clean", ["a"], ["the cat"], ["the cat"], [1.0], "english")
    text = _render(wer_table([clean], "english"))
    assert _row(text, "Dataset")[1:3] == ["Utts", "Hours"]  # fits 80 columns
    assert "skipped clips: 0 · empty references: 0" in text


def test_hypotheses_cut_by_a_decoding_guard_are_counted_and_marked(tmp_path: Path) -> None:
    looped = score("looped", ["a", "b", "c"], ["the cat", "a dog", "hi"], ["the the the", "a dog", "hi hi"], [1.0] * 3,
                   "basic", stops=["repeat", "end", "max_tokens"])
    clean = score("clean", ["d"], ["the cat"], ["the cat"], [1.0], "basic")
    text = _render(wer_table([looped, clean], "basic"))
    assert _cells(text, "looped", "Guard") == ["2"] and _cells(text, "overall", "Guard") == ["2"]
    assert "cut by a decoding guard: 2" in " ".join(text.split())  # the caption wraps to the table width
    assert "Guard" not in _render(wer_table([clean], "basic"))  # only when something was cut
    json_path, jsonl_path = write_report(tmp_path / "r.json", [looped, clean], "basic")
    rep = json.loads(json_path.read_text())
    assert (rep["datasets"]["looped"]["guard_stops"], rep["overall"]["guard_stops"]) == (2, 2)
    assert [json.loads(line)["stop"] for line in jsonl_path.read_text().splitlines()] == ["repeat", "end", "max_tokens", "end"]


def test_no_wer_is_shown_for_a_dataset_with_nothing_scored() -> None:
    good, unreadable = _scores()
    assert unreadable.problem and "2 clips skipped" in unreadable.problem
    text = _render(wer_table([good, unreadable], "english"))
    assert _cells(text, "unreadable", "WER %", "CER %") == ["n/a", "n/a"]  # never 0.00 over 0 utterances
    all_empty = score("fillers", ["f"], ["uh... um."], ["yes"], [1.0], "english")
    assert all_empty.problem and "empty after normalization" in all_empty.problem
    assert _cells(_render(wer_table([all_empty], "english")), "fillers", "WER %", "CER %") == ["n/a", "n/a"]
    assert overall([unreadable]).problem  # pooling nothing gives nothing


def test_report_counts_skipped_clips_and_empty_references() -> None:
    good, unreadable = _scores()
    rep = report_dict([good, unreadable], "english")
    assert rep["normalizer"] == "english"
    assert rep["datasets"]["good"]["skipped"] == 1
    assert rep["datasets"]["good"]["skipped_clips"] == ["/data/g3.wav: no such audio file"]
    assert rep["datasets"]["good"]["warnings"] == ["/data/g2.wav: read 1.0 s, manifest says 2.0 s"]
    assert rep["datasets"]["good"]["empty_references"] == 1
    assert rep["datasets"]["good"]["insertions"] == 1  # "hello" against the empty reference
    assert rep["datasets"]["good"]["wer"] == pytest.approx(0.5)
    assert rep["datasets"]["unreadable"]["wer"] is None and rep["datasets"]["unreadable"]["cer"] is None
    assert rep["datasets"]["unreadable"]["skipped"] == 2
    assert (rep["overall"]["skipped"], rep["overall"]["empty_references"]) == (3, 1)


def test_report_is_written_despite_non_finite_numbers(tmp_path: Path) -> None:
    nan_hours = score("d", ["a"], ["x y"], ["x y"], [math.nan], "basic")
    json_path, _ = write_report(tmp_path / "r.json", [nan_hours], "basic", extra={"speed": math.inf, "runs": [math.nan, 1.0]})
    rep = json.loads(json_path.read_text())
    assert rep["datasets"]["d"]["hours"] is None and rep["overall"]["hours"] is None
    assert rep["speed"] is None and rep["runs"] == [None, 1.0]
    assert rep["datasets"]["d"]["wer"] == 0.0
    assert _cells(_render(wer_table([nan_hours], "basic")), "d", "Hours", "WER %") == ["n/a", "0.00"]


def test_report_is_written_despite_a_lone_surrogate_in_a_transcript(tmp_path: Path) -> None:
    # json.loads accepts "\ud800" in a manifest, and UTF-8 cannot encode it as such.
    s = score("d\ud800", ["a\udfff"], ["x \ud800 y"], ["x y"], [1.0], "none")
    json_path, jsonl_path = write_report(tmp_path / "r.json", [s], "none")
    assert list(json.loads(json_path.read_text(encoding="utf-8"))["datasets"]) == ["d\ud800"]
    line = json.loads(jsonl_path.read_text(encoding="utf-8"))
    assert (line["id"], line["reference"]) == ("a\udfff", "x \ud800 y")


def test_report_path_is_checked_before_decoding(tmp_path: Path) -> None:
    assert check_report_path(tmp_path / "new" / "deeper" / "r.json") == tmp_path / "new" / "deeper" / "r.json"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    with pytest.raises(MacasrError, match="is a folder"):
        check_report_path(tmp_path)
    (tmp_path / "r.utterances.jsonl").mkdir()
    with pytest.raises(MacasrError, match="r.utterances.jsonl is a folder, in the way of the per-utterance file; give another report name"):
        check_report_path(tmp_path / "r.json")
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(MacasrError, match="is not a folder"):
        check_report_path(blocker / "sub" / "r.json")
    manifest = tmp_path / "test.jsonl"
    manifest.write_text("{}\n")
    with pytest.raises(MacasrError, match="one of this command's inputs"):
        check_report_path(tmp_path / "test.jsonl", inputs=[manifest])


def test_report_path_in_a_read_only_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    # Tests may run as root, who can write anywhere: ask os.access, the way the check does.
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(MacasrError, match=f"cannot write in {tmp_path}"):
        check_report_path(tmp_path / "sub" / "r.json")


def test_a_folder_nothing_can_be_written_in_is_refused_before_decoding() -> None:
    """/proc passes os.access for root, but no file can be created there: a real write finds out."""
    with pytest.raises(MacasrError, match=r"report /proc/x.json: cannot write in /proc \("):
        check_report_path(Path("/proc/x.json"))
