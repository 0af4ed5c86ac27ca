"""Normalizers: `whisper` stays exactly openai-whisper's; `english` drops its punctuation quirks.

The expected strings under "openai-whisper reference" are not macasr's output: they are the cases
of openai-whisper's own tests/test_normalizer.py (https://github.com/openai/whisper, MIT licence,
Copyright (c) 2022 OpenAI), and, for the quirks, what openai-whisper 20250625's
``EnglishTextNormalizer`` returns (run from its PyPI sdist; leading/trailing spaces trimmed).
"""

from __future__ import annotations

import unicodedata

import pytest

from macasr.evaluate.normalize import NORMALIZERS, get_normalizer
from macasr.evaluate.wer import score

# --- openai-whisper reference -----------------------------------------------------------------

# tests/test_normalizer.py::test_number_normalizer (run there on EnglishTextNormalizer too).
OPENAI_NUMBER_CASES = [
    ("two", "2"),
    ("thirty one", "31"),
    ("five twenty four", "524"),
    ("nineteen ninety nine", "1999"),
    ("twenty nineteen", "2019"),
    ("two point five million", "2500000"),
    ("four point two billions", "4200000000s"),
    ("200 thousand", "200000"),
    ("200 thousand dollars", "$200000"),
    ("$20 million", "$20000000"),
    ("€52.4 million", "€52400000"),
    ("£77 thousands", "£77000s"),
    ("two double o eight", "2008"),
    ("three thousand twenty nine", "3029"),
    ("forty three thousand two hundred sixty", "43260"),
    ("forty three thousand two hundred and sixty", "43260"),
    ("nineteen fifties", "1950s"),
    ("thirty first", "31st"),
    ("thirty three thousand and three hundred and thirty third", "33333rd"),
    ("three billion", "3000000000"),
    ("millions", "1000000s"),
    ("july third twenty twenty", "july 3rd 2020"),
    ("august twenty sixth twenty twenty one", "august 26th 2021"),
    ("3 14", "3 14"),
    ("3.14", "3.14"),
    ("3 point 2", "3.2"),
    ("3 point 14", "3.14"),
    ("fourteen point 4", "14.4"),
    ("two point two five dollars", "$2.25"),
    ("two hundred million dollars", "$200000000"),
    ("$20.1 million", "$20100000"),
    ("ninety percent", "90%"),
    ("seventy six per cent", "76%"),
    ("double oh seven", "007"),
    ("double zero seven", "007"),
    ("nine one one", "911"),
    ("nine double one", "911"),
    ("one triple oh one", "10001"),
    ("two thousandth", "2000th"),
    ("thirty two thousandth", "32000th"),
    ("minus 500", "-500"),
    ("positive twenty thousand", "+20000"),
    ("two dollars and seventy cents", "$2.70"),
    ("3 cents", "¢3"),
    ("$0.36", "¢36"),
    ("three euros and sixty five cents", "€3.65"),
    ("three and a half million", "3500000"),
    ("forty eight and a half dollars", "$48.5"),
    ("b747", "b 747"),
    ("10 th", "10th"),
    ("10th", "10th"),
]

# tests/test_normalizer.py::test_text_normalizer, and test_spelling_normalizer's two words.
OPENAI_TEXT_CASES = [
    ("Let's", "let us"),
    ("he's like", "he is like"),
    ("she's been like", "she has been like"),
    ("10km", "10 km"),
    ("10mm", "10 mm"),
    ("RC232", "rc 232"),
    ("Mr. Park visited Assoc. Prof. Kim Jr.", "mister park visited associate professor kim junior"),
    ("mobilisation", "mobilization"),
    ("cancelation", "cancellation"),
]

# openai-whisper 20250625 EnglishTextNormalizer on the strings of issue 7: quirks kept on purpose.
OPENAI_QUIRK_CASES = [
    ("James lives near the beach...", "james lives near the beach ."),
    ("wait… what", "wait . what"),
    ("Hmm... uh, um!", "."),
    ("I don’t know…", "i don t know .."),
    ("It’s twenty-five past three.", "it s 25 past 3"),
    ("the end $", "the end $"),
    ("Mr. Smith's colour is 10%", "mister smith is color is 10%"),
    ("[noise] hello (laughs) world", "hello world"),
    ("Café déjà vu — naïve façade", "cafe deja vu naive facade"),
]


@pytest.mark.parametrize(("text", "expected"), OPENAI_NUMBER_CASES + OPENAI_TEXT_CASES + OPENAI_QUIRK_CASES)
def test_whisper_is_openai_whispers_normalizer(text: str, expected: str) -> None:
    assert get_normalizer("whisper")(text) == expected


@pytest.mark.parametrize(("text", "expected"), OPENAI_NUMBER_CASES + OPENAI_TEXT_CASES)
def test_english_agrees_with_whisper_where_whisper_has_no_quirk(text: str, expected: str) -> None:
    assert get_normalizer("english")(text) == expected


# --- english ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("James lives near the beach...", "james lives near the beach"),
        ("wait… what", "wait what"),
        ("Hmm... uh, um!", ""),
        ("I don’t know…", "i do not know"),
        ("It’s twenty-five past three.", "it is 25 past 3"),
        ("we‘re here, aren`t we?", "we are here are not we"),
        ("the end $", "the end"),
        ("ok !!! ?? ... — ¿ « » ", "ok"),
        ("he said: “yes”!", "he said yes"),
        ("five...", "5"),
        ("it costs $5.", "it costs $5"),
        ("90 percent", "90%"),
        ("Mr. Smith’s colour", "mister smith is color"),
    ],
)
def test_english_normalizer(text: str, expected: str) -> None:
    assert get_normalizer("english")(text) == expected


def test_english_unifies_apostrophes_before_contractions() -> None:
    norm = get_normalizer("english")
    text = "don't won't I'm we'll they've she'd you're"
    expected = "do not will not i am we will they have she would you are"
    assert norm(text) == expected
    for apostrophe in "\u2019\u2018\u02bc\u2032`\u00b4\uff07":
        assert norm(text.replace("'", apostrophe)) == expected, apostrophe


def test_basic_keeps_every_apostrophe_variant_inside_the_word() -> None:
    for apostrophe in "'\u2019\u2018\u02bc\u2032`\u00b4":
        assert get_normalizer("basic")(f"I don{apostrophe}t know") == "i don't know", apostrophe


@pytest.mark.parametrize(
    "text",
    [
        "Well... I mean… it's — you know — 'fine'?!",
        "“Quoted” «guillemets» ‹single› „low“ ‚low‘ ¿Qué? ¡Sí!",
        "dots . .. ... …… and dashes - -- — – ‒ and more ; : , ! ? ...",
        "symbols $ € £ ¢ % & * # @ ^ ~ | / \\ + = < > … end",
        "Ｆｕｌｌ－ｗｉｄｔｈ！ ｐｕｎｃｔｕａｔｉｏｎ。",
        "10... 20%... $5... 3.5... hmm...",
    ],
)
def test_english_never_keeps_punctuation_as_a_word(text: str) -> None:
    for word in get_normalizer("english")(text).split():
        assert any(unicodedata.category(c)[0] in "LN" for c in word), (word, text)


# --- every normalizer ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NORMALIZERS)
def test_an_empty_normalized_reference_is_the_same_in_every_normalizer(name: str) -> None:
    s = score("d", ["u1", "u2"], ["  ", "blue sky"], ["red fish", "blue sky"], [1.0, 1.0], name)
    assert s.empty_references == 1
    assert (s.counts.insertions, s.counts.ref_words) == (2, 2)
    assert s.per_utterance[0].errors == 2 and s.per_utterance[0].ref_norm == ""
    assert s.problem is None


def test_a_filler_only_reference_is_empty_with_english() -> None:
    s = score("d", ["u"], ["Hmm... uh, um!"], ["hmm yes"], [1.0], "english")
    assert s.empty_references == 1 and s.counts.insertions == 1 and s.counts.ref_words == 0


def test_a_perfect_hypothesis_of_a_punctuated_reference_scores_zero_with_english() -> None:
    refs = ["James lives near the beach...", "wait… what", "I don’t know…"]
    hyps = ["james lives near the beach", "wait what", "i don't know"]
    assert score("d", ["a", "b", "c"], refs, hyps, [1.0] * 3, "english").counts.word_errors == 0
    # The reason it exists: whisper counts a deletion and splits the typographic contraction.
    assert score("d", ["a", "b", "c"], refs, hyps, [1.0] * 3, "whisper").counts.word_errors > 0


def test_the_config_offers_every_normalizer() -> None:
    import dataclasses
    import typing

    from macasr.config import EvalConfig

    field = next(f for f in dataclasses.fields(EvalConfig) if f.name == "normalizer")
    assert typing.get_args(typing.get_type_hints(EvalConfig)[field.name]) == NORMALIZERS
