"""Tests for macasr.evaluate: normalizers, error counting, reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from macasr.evaluate.normalize import NORMALIZERS, get_normalizer
from macasr.evaluate.report import examples_table, report_dict, wer_table, write_report
from macasr.evaluate.wer import ErrorCounts, count_errors, overall, score


def _render(renderable: object) -> str:
    console = Console(record=True, width=120)
    console.print(renderable)
    return console.export_text()


# --- error counting ---------------------------------------------------------------------------


def test_deletion() -> None:
    c = count_errors(["the cat sat on the mat"], ["the cat sat on mat"])
    assert (c.substitutions, c.deletions, c.insertions, c.hits) == (0, 1, 0, 5)
    assert c.ref_words == 6
    assert c.wer == pytest.approx(1 / 6)


def test_substitution_and_insertion() -> None:
    c = count_errors(["the cat sat"], ["the dog sat down"])
    assert (c.substitutions, c.deletions, c.insertions, c.hits) == (1, 0, 1, 2)
    assert c.wer == pytest.approx(2 / 3)


def test_cer_known_pair() -> None:
    # "kitten" -> "sitting": 2 substitutions (k->s, e->i) + 1 insertion (g), 6 reference chars.
    c = count_errors(["kitten"], ["sitting"])
    assert (c.char_errors, c.ref_chars) == (3, 6)
    assert c.cer == pytest.approx(0.5)


def test_cer_counts_the_space_between_words() -> None:
    c = count_errors(["ab cd"], ["abcd"])
    assert (c.char_errors, c.ref_chars) == (1, 5)


def test_empty_reference_is_all_insertions() -> None:
    c = count_errors([""], ["hello there world"])
    assert (c.insertions, c.deletions, c.substitutions, c.ref_words) == (3, 0, 0, 0)
    assert c.wer == 3.0  # errors / max(ref_words, 1): finite
    assert c.char_errors == len("hello there world")


def test_empty_hypothesis_is_all_deletions() -> None:
    c = count_errors(["one two"], ["   "])
    assert (c.deletions, c.insertions, c.ref_words) == (2, 0, 2)
    assert c.wer == 1.0
    assert c.cer == 1.0


def test_both_empty_is_perfect() -> None:
    c = count_errors(["", " "], ["", ""])
    assert c == ErrorCounts()
    assert c.wer == 0.0 and c.cer == 0.0


def test_mixed_empty_and_nonempty_pairs_pool() -> None:
    c = count_errors(["", "a b c", "x y"], ["q", "a b c", ""])
    assert (c.insertions, c.deletions, c.hits, c.ref_words) == (1, 2, 3, 5)


def test_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="length"):
        count_errors(["a", "b"], ["a"])


def test_error_counts_add() -> None:
    a = ErrorCounts(1, 2, 3, 4, 7, 5, 20)
    total = a + ErrorCounts(1, 1, 1, 1, 3, 2, 10)
    assert total == ErrorCounts(2, 3, 4, 5, 10, 7, 30)


def _two_datasets() -> list:
    a = score(
        "clean",
        ["a1", "a2"],
        ["The cat sat.", "On the mat"],
        ["the cat sat", "on mat"],
        [1.5, 2.0],
        "basic",
    )
    b = score("other", ["b1"], ["Hello world"], ["hello big world"], [3600.0], "basic")
    return [a, b]


def test_score_per_utterance_and_hours() -> None:
    a, b = _two_datasets()
    assert a.utterances == 2
    assert a.hours == pytest.approx(3.5 / 3600)
    assert [u.errors for u in a.per_utterance] == [0, 1]
    first = a.per_utterance[0]
    assert (first.id, first.reference, first.ref_norm) == ("a1", "The cat sat.", "the cat sat")
    assert b.counts.insertions == 1 and b.wer == pytest.approx(0.5)


def test_overall_sums_counts() -> None:
    a, b = _two_datasets()
    total = overall([a, b])
    assert total.name == "overall"
    assert total.utterances == 3
    assert total.hours == pytest.approx(a.hours + b.hours)
    assert total.counts == a.counts + b.counts
    assert total.counts.ref_words == 8
    assert total.wer == pytest.approx(2 / 8)  # pooled, not the mean of 1/6 and 1/2
    assert total.per_utterance == ()


# --- normalizers ------------------------------------------------------------------------------


def test_whisper_normalizer() -> None:
    norm = get_normalizer("whisper")
    out = norm("Mr. Smith's colour is 10%")
    assert out == out.lower()
    assert "color" in out.split() and "colour" not in out  # British->American spelling map
    assert "mister" in out.split()  # title expanded, its period gone
    assert "10%" in out
    assert norm("I have twenty five apples, don't I?") == "i have 25 apples do not i"
    assert norm("  Um, the favourite  organisation. ") == "the favorite organization"


def test_basic_normalizer() -> None:
    norm = get_normalizer("basic")
    assert norm("Hello, World!  Don't   STOP.") == "hello world don't stop"
    assert norm("'quoted' words") == "quoted words"
    assert norm("Colour") == "colour"  # no spelling map here


def test_none_normalizer_keeps_case_and_punctuation() -> None:
    assert get_normalizer("none")("  Hello,   World! ") == "Hello, World!"


def test_unknown_normalizer_raises() -> None:
    with pytest.raises(ValueError, match="whisper, english, basic, none"):
        get_normalizer("fancy")


def test_normalizers_are_cached() -> None:
    for name in NORMALIZERS:
        assert get_normalizer(name) is get_normalizer(name)


# --- reports ----------------------------------------------------------------------------------


def test_report_dict() -> None:
    a, b = _two_datasets()
    rep = report_dict([a, b], "basic", extra={"checkpoint": "ckpt/step-100"})
    assert rep["normalizer"] == "basic"
    assert rep["checkpoint"] == "ckpt/step-100"
    assert set(rep["datasets"]) == {"clean", "other"}
    assert rep["datasets"]["clean"]["deletions"] == 1
    assert rep["overall"]["ref_words"] == 8
    assert rep["overall"]["wer"] == pytest.approx(0.25)
    keys = {
        "wer",
        "cer",
        "utterances",
        "skipped",
        "empty_references",
        "guard_stops",
        "hours",
        "substitutions",
        "deletions",
        "insertions",
        "ref_words",
        "hyp_words",
        "length_ratio",
        "loops",
        "loop_rate",
        "empty_outputs",
        "empty_output_rate",
        "no_speech_clips",
        "no_speech_outputs",
        "no_speech_output_rate",
        "decode_seconds",
        "rtfx",
    }
    assert set(rep["overall"]) == keys
    assert set(rep["datasets"]["other"]) == keys | {"skipped_clips", "warnings"}


def test_report_dict_rejects_bad_input() -> None:
    a, _ = _two_datasets()
    with pytest.raises(ValueError, match="reserved"):
        report_dict([a], "basic", extra={"overall": 1})
    with pytest.raises(ValueError, match="unique"):
        report_dict([a, a], "basic")


def test_write_report_round_trip(tmp_path: Path) -> None:
    a, b = _two_datasets()
    json_path, jsonl_path = write_report(tmp_path / "out" / "eval.json", [a, b], "basic")
    assert jsonl_path == tmp_path / "out" / "eval.utterances.jsonl"
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(report_dict([a, b], "basic")))
    lines = [json.loads(line) for line in jsonl_path.read_text().splitlines()]
    assert len(lines) == 3
    assert lines[1] == {
        "dataset": "clean",
        "id": "a2",
        "reference": "On the mat",
        "hypothesis": "on mat",
        "ref_norm": "on the mat",
        "hyp_norm": "on mat",
        "errors": 1,
        "alignment": [{"type": "delete", "ref": "the", "hyp": "", "position": 1}],
        "stop": "end",
        "loop": False,
        "no_speech": False,
    }
    assert sorted(p.name for p in json_path.parent.iterdir()) == [
        "eval.json",
        "eval.utterances.jsonl",
    ]  # no temp files left behind


def test_write_report_leaves_nothing_on_bad_extra(tmp_path: Path) -> None:
    a, _ = _two_datasets()
    with pytest.raises(TypeError):
        write_report(tmp_path / "eval.json", [a], "basic", extra={"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_wer_table_renders() -> None:
    a, b = _two_datasets()
    text = _render(wer_table([a, b], "whisper", title="Results"))
    for expected in ("Results", "clean", "other", "overall", "whisper", "16.67", "50.00", "25.00"):
        assert expected in text
    single = _render(wer_table([a], "basic"))
    assert "clean" in single and "overall" not in single and "basic" in single


def test_wer_table_does_not_parse_markup_in_names() -> None:
    s = score("[dev]", ["x"], ["a"], ["a"], [1.0], "none")
    assert "[dev]" in _render(wer_table([s], "none"))


def test_examples_table_is_worst_first() -> None:
    s = score(
        "d",
        ["u0", "u1", "u2"],
        ["a b", "[noise] c d e", "f"],
        ["a b", "x y z", "g"],
        [1.0] * 3,
        "none",
    )
    text = _render(examples_table(s, n=2))
    assert "u1" in text and "u2" in text and "u0" not in text
    assert text.index("u1") < text.index("u2")
    assert "[noise]" in text
