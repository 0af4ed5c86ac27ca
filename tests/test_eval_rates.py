"""The rates that tell why a WER is bad (loops, empty outputs, outputs on no-speech clips, length
ratio, RTFx) and the aligned errors of each utterance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from macasr.evaluate.loops import is_loop, looping_units
from macasr.evaluate.report import rates_table, report_dict, write_report
from macasr.evaluate.wer import ErrorSpan, overall, score
from tests.test_eval_report import _render, _row
from tests.test_eval_runs import _manifest, ckpt  # noqa: F401 (a fixture)


def _cells(text: str, name: str) -> list[str]:
    """The cells after the first of the row whose first cell is `name`."""
    return _row(text, name)[1:]


@pytest.mark.parametrize(("hyp", "ref", "stop", "loops"), [
    ("go go go", "go", "end", True),  # a word three times in a row
    ("go go", "go", "end", False),  # twice is not a loop
    ("i think so i think so i think so", "i think so", "end", True),  # a three-word unit
    ("a b c d e f g h a b c d e f g h a b c d e f g h", "x", "end", True),  # the longest unit looked for
    ("a b c d e f g h i a b c d e f g h i a b c d e f g h i", "x", "end", False),  # 9 words: longer than a unit
    ("no no no", "no no no", "end", False),  # the reference says so: an answer, not a loop
    ("no no no", "no no", "end", True),
    ("the cat sat", "the cat sat", "repeat", True),  # the repeat guard cut it
    ("the the cat the the cat", "the cat", "max_tokens", False),
    ("", "", "end", False),
])
def test_a_loop_is_a_unit_repeated_three_times_in_a_row_or_a_repeat_stop(hyp: str, ref: str, stop: str, loops: bool) -> None:
    assert is_loop(hyp, ref, stop) is loops


def test_looping_units_names_every_repeated_unit() -> None:
    assert looping_units("x a b a b a b a y".split()) == {("a", "b"), ("b", "a")}


def _looped() -> list:
    a = score("a", ["1", "2", "3", "4"], ["the cat", "a dog", "hello", ""], ["the the the cat", "", "hello", "uh huh"],
              [1.0, 2.0, 3.0, 4.0], "basic", stops=["end", "end", "end", "end"], no_speech=[False, True, False, True],
              decode_seconds=2.5)
    b = score("b", ["5"], ["one two three four"], ["one two three four"], [10.0], "basic", decode_seconds=2.0)
    return [a, b]


def test_rates_count_loops_empty_outputs_and_outputs_on_no_speech_clips() -> None:
    a, b = _looped()
    assert (a.loops, a.empty_outputs, a.no_speech_clips, a.no_speech_outputs) == (1, 1, 2, 1)
    assert a.loop_rate == pytest.approx(1 / 4)
    assert a.empty_output_rate == pytest.approx(1 / 3)  # of the 3 non-empty references
    assert a.no_speech_output_rate == pytest.approx(1 / 2)  # "uh huh" on a clip without speech
    assert a.length_ratio == pytest.approx((4 + 0 + 1 + 2) / (2 + 2 + 1))  # pooled words
    assert a.rtfx == pytest.approx(10.0 / 2.5)
    assert b.no_speech_output_rate is None  # no clip without speech: n/a, not 0
    total = overall([a, b])
    assert (total.loops, total.empty_outputs, total.no_speech_clips, total.no_speech_outputs) == (1, 1, 2, 1)
    assert total.rtfx == pytest.approx(20.0 / 4.5) and total.length_ratio == pytest.approx(11 / 9)
    untimed = score("c", ["6"], ["x"], ["x"], [1.0], "basic")
    assert untimed.rtfx is None and overall([a, untimed]).rtfx is None  # never a speed over part of the audio


def test_rates_table_shows_each_rate_and_n_a_without_a_denominator() -> None:
    a, b = _looped()
    text = _render(rates_table([a, b]))
    assert _cells(text, "Dataset") == ["Loops %", "Empty out %", "No-speech out %", "Hyp/Ref", "RTFx"]
    assert _cells(text, "a") == ["25.00", "33.33", "50.00", "1.400", "4.0"]
    assert _cells(text, "b") == ["0.00", "0.00", "n/a", "1.000", "5.0"]
    assert _cells(text, "overall") == ["20.00", "25.00", "50.00", "1.222", "4.4"]
    nothing = score("gone", [], [], [], [], "basic", skipped=["x.wav: no such audio file"])
    assert _cells(_render(rates_table([nothing])), "gone") == ["n/a"] * 5


def test_report_holds_the_rates_and_their_counts() -> None:
    a, b = _looped()
    rep = report_dict([a, b], "basic")
    entry = rep["datasets"]["a"]
    assert (entry["loops"], entry["empty_outputs"], entry["no_speech_clips"], entry["no_speech_outputs"]) == (1, 1, 2, 1)
    assert entry["loop_rate"] == pytest.approx(0.25) and entry["no_speech_output_rate"] == pytest.approx(0.5)
    assert (entry["hyp_words"], entry["ref_words"]) == (7, 5) and entry["length_ratio"] == pytest.approx(1.4)
    assert entry["decode_seconds"] == 2.5 and entry["rtfx"] == pytest.approx(4.0)
    assert rep["datasets"]["b"]["no_speech_output_rate"] is None
    assert rep["overall"]["loop_rate"] == pytest.approx(0.2)


def test_each_utterance_carries_its_aligned_errors(tmp_path: Path) -> None:
    s = score("d", ["sub", "del", "ins", "none", "all"], ["the cat sat", "a b c", "x y", "same", "gone words"],
              ["the dog sat", "a c", "x big y z", "same", ""], [1.0] * 5, "basic")
    spans = {u.id: u.alignment for u in s.per_utterance}
    assert spans["sub"] == (ErrorSpan("substitute", "cat", "dog", 1),)
    assert spans["del"] == (ErrorSpan("delete", "b", "", 1),)
    assert spans["ins"] == (ErrorSpan("insert", "", "big", 1), ErrorSpan("insert", "", "z", 2))
    assert spans["none"] == ()
    assert spans["all"] == (ErrorSpan("delete", "gone words", "", 0),)
    assert [u.errors for u in s.per_utterance] == [1, 1, 2, 0, 2]
    _, jsonl = write_report(tmp_path / "r.json", [s], "basic")
    lines = {line["id"]: line for line in map(json.loads, jsonl.read_text().splitlines())}
    assert lines["ins"]["alignment"] == [{"type": "insert", "ref": "", "hyp": "big", "position": 1},
                                         {"type": "insert", "ref": "", "hyp": "z", "position": 2}]
    assert lines["none"]["alignment"] == [] and lines["none"]["loop"] is False


def test_an_empty_hypothesis_of_an_empty_reference_is_no_empty_output() -> None:
    s = score("d", ["a", "b"], ["", "[noise]"], ["", ""], [1.0, 1.0], "english")
    assert s.empty_outputs == 0 and s.empty_output_rate is None  # no reference to miss


def test_clips_the_vad_found_silent_are_counted_from_decoded_no_speech(ckpt: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from macasr.cli import app
    from macasr.evaluate import run as run_module

    manifest = _manifest(tmp_path / "m.jsonl", {"a.wav": True, "b.wav": True, "c.wav": True})
    real = run_module.decode_loader

    def with_vad(*args: object, **kwargs: object):
        decoded = real(*args, **kwargs)
        decoded.no_speech = {0, 2}  # as the VAD helper fills it: dataset indices
        decoded.hypotheses[2] = ""  # nothing said on one of them
        return decoded

    monkeypatch.setattr(run_module, "decode_loader", with_vad)
    args = ["eval", "--ckpt", str(ckpt), "--manifest", str(manifest), "--report", str(tmp_path / "r.json"), "--vad", "off"]
    result = CliRunner().invoke(app, args)  # off: every clip decoded, whatever the real VAD finds
    assert result.exit_code == 0, result.output
    entry = json.loads((tmp_path / "r.json").read_text())["datasets"]["m"]
    assert (entry["no_speech_clips"], entry["no_speech_outputs"], entry["no_speech_output_rate"]) == (2, 1, 0.5)
    lines = [json.loads(line) for line in (tmp_path / "r.utterances.jsonl").read_text().splitlines()]
    assert [line["no_speech"] for line in lines] == [True, False, True]
