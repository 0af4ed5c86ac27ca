"""Training targets per dataset: annotation tags dropped, one spelling convention."""

from __future__ import annotations

import pytest

from macasr.data.text import drop_annotations, normalize_target


@pytest.mark.parametrize(("text", "expected"), [
    ("[laughter] yeah i th- think so [noise]", "yeah i think so"),  # events and a partial word
    ("okay (( )) fine (( maybe so )) <unk> right", "okay fine maybe so right"),  # LDC uncertain speech keeps its words
    ("[laughter-yes] it was th[e]- -[th]at one {breath}", "yes it was one"),  # Switchboard MS-State
    ("uh-huh a well-known place", "uh-huh a well-known place"),  # hyphenated words are words
    ("[vocalized-noise]", ""),
])
def test_annotations_go_and_words_stay(text: str, expected: str) -> None:
    assert drop_annotations(text) == expected


@pytest.mark.parametrize(("mode", "expected"), [
    ("keep", "Hello, World! [noise]"),
    ("lower", "hello, world! [noise]"),
    ("basic", "hello world noise"),
])
def test_text_modes(mode: str, expected: str) -> None:
    assert normalize_target("Hello, World! [noise]", mode, False) == expected


def test_annotations_are_dropped_before_the_mode_is_applied() -> None:
    # basic would turn "[noise]" into the word "noise"; dropping first keeps it out of the target.
    assert normalize_target("HELLO [noise] THERE", "basic", True) == "hello there"
    assert normalize_target("Mr. Smith [laughter] arrived.", "whisper", True) == "mister smith arrived"


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown text mode 'upper'"):
        normalize_target("x", "upper", False)
