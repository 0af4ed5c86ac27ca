"""`macasr eval --compare a.json b.json`: WER change per dataset and the most changed utterances."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from macasr.cli import app
from macasr.errors import MacasrError
from macasr.evaluate.compare import compare_reports, load_report
from macasr.evaluate.report import utterances_path, write_report
from macasr.evaluate.wer import score
from tests.test_eval_report import _row as report_row

runner = CliRunner()
REFS = ["the cat sat on the mat", "hello world", "seven green apples", "please call john"]


def _report(path: Path, hyps: list[str], normalizer: str = "basic", name: str = "clean", ids: list[str] | None = None,
            extra_set: bool = False) -> Path:
    ids = ids or [f"u{i}" for i in range(len(hyps))]
    scores = [score(name, ids, REFS[: len(hyps)], hyps, [1.0] * len(hyps), normalizer)]
    if extra_set:
        scores.append(score("other", ["o1"], ["a b"], ["a b"], [1.0], normalizer))
    return write_report(path, scores, normalizer)[0]


def _row(text: str, name: str) -> list[str]:
    """The cells after the first of the row whose first cell is `name`."""
    return report_row(text, name)[1:]


def _compare(a: Path, b: Path):
    return runner.invoke(app, ["eval", "--compare", str(a), str(b)], env={"COLUMNS": "200"})


def test_compare_prints_wer_change_and_the_utterances_that_changed_most(tmp_path: Path) -> None:
    a = _report(tmp_path / "a.json", ["the cat sat on the mat", "hello", "seven green apples", "please call john"])
    b = _report(tmp_path / "b.json", ["the dog sat on a hat", "hello world", "seven green apples", "please call"])
    result = _compare(a, b)
    assert result.exit_code == 0, result.output
    # a: 1 error of 14 reference words; b: 3 + 1 = 4 errors
    assert _row(result.stdout, "Dataset") == ["WER a %", "WER b %", "Δ points", "Δ rel %"]
    assert _row(result.stdout, "clean") == ["7.14", "28.57", "+21.43", "+300.00"]
    assert _row(result.stdout, "u0")[:1] == ["0→3"] and _row(result.stdout, "u1")[:1] == ["1→0"]
    assert _row(result.stdout, "u3")[:1] == ["0→1"]
    assert "u2" not in result.stdout  # unchanged
    assert result.stdout.index("u0") < result.stdout.index("u1")  # most changed first
    assert result.stderr == ""  # nothing that could not be compared


def test_compare_says_what_cannot_be_compared(tmp_path: Path) -> None:
    a = _report(tmp_path / "a.json", ["the cat sat on the mat", "hello"], extra_set=True)
    b = _report(tmp_path / "b.json", ["the cat sat on the mat", "hello world", "x"], normalizer="english", ids=["u0", "u1", "new"])
    comparison = compare_reports(load_report(a), load_report(b))
    (clean,) = comparison.datasets
    assert clean.name == "clean (2 common)"  # b scored one more utterance: a changed test set is no changed model
    common_b = score("clean", ["u0", "u1"], REFS[:2], ["the cat sat on the mat", "hello world"], [1.0, 1.0], "english")
    assert clean.wer_a == load_report(a).datasets["clean"]["wer"] and clean.wer_b == pytest.approx(common_b.wer)
    assert clean.wer_b != load_report(b).datasets["clean"]["wer"]
    assert [c.id for c in comparison.changed["clean"]] == ["u1"]
    assert comparison.notes == [
        f"normalizers differ: {a} used `basic`, {b} `english`; their WERs are not comparable",
        f"only in {a}: other (not compared)",
        f"clean: the reports scored different utterances (0 only in {a}, 1 only in {b}); its WERs are over the 2 both scored",
    ]
    result = _compare(a, b)
    assert result.exit_code == 0, result.output
    assert "note: normalizers differ" in result.stderr and f"note: only in {a}: other" in result.stderr.replace("\n", " ")


def test_compare_pools_the_common_datasets_and_handles_a_zero_wer(tmp_path: Path) -> None:
    a = _report(tmp_path / "a.json", ["the cat sat on the mat", "hello world"], extra_set=True)
    b = _report(tmp_path / "b.json", ["the cat sat on the mat", "hello"], extra_set=True)
    comparison = compare_reports(load_report(a), load_report(b))
    assert comparison.datasets[0].relative is None and comparison.datasets[0].absolute == pytest.approx(1 / 8)
    assert comparison.pooled.wer_b == pytest.approx(1 / 10)  # 1 error over 8 + 2 reference words
    text = _compare(a, b).stdout
    assert _row(text, "clean") == ["0.00", "12.50", "+12.50", "n/a"] and _row(text, "overall")[1] == "10.00"


def test_compare_without_per_utterance_files_still_compares_wers(tmp_path: Path) -> None:
    a = _report(tmp_path / "a.json", ["the cat sat on the mat"])
    b = _report(tmp_path / "b.json", ["the cat sat"])
    utterances_path(b).unlink()
    result = _compare(a, b)
    assert result.exit_code == 0 and _row(result.stdout, "clean")[:2] == ["0.00", "50.00"]
    assert "changed utterances not shown" in result.stderr


@pytest.mark.parametrize(("content", "why"), [
    (None, "no such file"),
    ("{not json", "not JSON (line 1 column 2"),
    ('{"datasets": []}', "not a `macasr eval --report` file"),
    ('{"normalizer": "basic", "datasets": {"d": {"wer": "low"}}}', "dataset `d`: `wer` must be a number or null"),
    ('{"normalizer": "basic", "datasets": {"d": {"wer": 0.1, "substitutions": 1}}}', "dataset `d`: `deletions` must be a whole number"),
])
def test_a_missing_or_garbled_report_is_one_line(tmp_path: Path, content: str | None, why: str) -> None:
    good = _report(tmp_path / "good.json", ["the cat sat on the mat"])
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    with pytest.raises(MacasrError, match=re.escape(f"report {bad}: {why}")):
        load_report(bad)
    result = _compare(good, bad)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [result.stderr.strip()] and result.stderr.startswith(f"error: report {bad}: {why}")


def test_a_garbled_utterance_line_names_its_file_and_line(tmp_path: Path) -> None:
    a = _report(tmp_path / "a.json", ["the cat sat on the mat", "hello"])
    jsonl = utterances_path(a)
    jsonl.write_text(jsonl.read_text() + '{"dataset": "clean"}\n')
    with pytest.raises(MacasrError, match=re.escape(f"{jsonl}:3: expected an utterance with `dataset`, `id` and `errors`")):
        load_report(a)


def test_reports_without_a_common_dataset_are_refused(tmp_path: Path) -> None:
    a = _report(tmp_path / "a.json", ["x"], name="one")
    b = _report(tmp_path / "b.json", ["x"], name="two")
    result = _compare(a, b)
    assert result.exit_code == 1 and "share no dataset" in result.stderr


def test_compare_decodes_nothing_so_model_options_are_refused(tmp_path: Path) -> None:
    a = _report(tmp_path / "a.json", ["x"])
    result = runner.invoke(app, ["eval", "--compare", str(a), str(a), "--ckpt", "best.pt", "--num-beams", "2"])
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: --compare reads two reports and decodes nothing: drop --ckpt, --num-beams"
