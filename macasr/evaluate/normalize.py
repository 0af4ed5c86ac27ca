"""Text normalizers applied to references and hypotheses before scoring.

WER depends as much on normalization as on the model, so every report names the normalizer used.

- ``whisper``: Whisper's English normalizer (``EnglishTextNormalizer`` as shipped in transformers,
  which gives the same strings as openai-whisper's): lower-cases, expands contractions and titles,
  removes fillers and punctuation, writes spoken numbers as digits and maps British spellings to
  American. Kept exactly as published, quirks included, because published English results use it.
- ``english``: ``whisper`` without its punctuation quirks, for punctuated or typed references
  (Common Voice, How2): every apostrophe or single-quote variant becomes ``'`` and the text is
  NFKC-normalized first (so "don’t" is expanded like "don't" and "…" is read as "..."), and a
  "word" with no letter or digit (".", "$") is dropped afterwards. Numbers, fillers and spellings
  are whisper's own.
- ``basic``: lower-cases, removes punctuation and symbols (apostrophes inside words are kept, so
  "don't" stays one word) and collapses whitespace. Language-neutral.
- ``none``: the text as written, with whitespace collapsed only.

``english_spelling.json`` (the British→American map the whisper normalizer needs, which
transformers does not ship) is copied unchanged from ``whisper/normalizers/english.json`` in the
``openai-whisper`` 20250625 sdist on PyPI (https://github.com/openai/whisper), MIT licence,
Copyright (c) 2022 OpenAI.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections.abc import Callable
from importlib import resources

NORMALIZERS: tuple[str, ...] = ("whisper", "english", "basic", "none")

_SPELLING_FILE = "english_spelling.json"
# Apostrophes that do not sit between two word characters ('quoted', trailing', 'leading).
_LOOSE_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")
# Typographic apostrophes, single quotes, primes and accents typed for an apostrophe: all read as '.
_APOSTROPHES = str.maketrans(dict.fromkeys("\u2019\u2018\u201b\u02bc\u2032\u0060\u00b4", "'"))


def _collapse(text: str) -> str:
    """Join words with single spaces and trim, so that scoring never sees empty tokens."""
    return " ".join(text.split())


def _load_spelling_map() -> dict[str, str]:
    """Read the British→American map shipped as package data."""
    source = resources.files(__package__).joinpath(_SPELLING_FILE)
    return json.loads(source.read_text(encoding="utf-8"))


def _whisper() -> Callable[[str], str]:
    """Build the transformers Whisper English normalizer (parses a 56 kB json, so cached)."""
    # Imported here: pulling in transformers is slow and only this normalizer needs it.
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    normalizer = EnglishTextNormalizer(_load_spelling_map())

    def normalize(text: str) -> str:
        # The transformers normalizer can leave a leading or trailing space.
        return _collapse(normalizer(text))

    return normalize


def _is_word(token: str) -> bool:
    """A word holds at least one letter or digit; ".", "$" or "--" alone is leftover punctuation."""
    return any(unicodedata.category(c)[0] in "LN" for c in token)


def _english() -> Callable[[str], str]:
    """Build the `english` normalizer: whisper's, fed clean apostrophes, with stray symbols dropped."""
    whisper = get_normalizer("whisper")

    def normalize(text: str) -> str:
        # Apostrophes first (NFKC would turn "´" into a space and an accent), then NFKC: whisper's
        # own NFKD runs after its period rule, so "…" would survive as "." and "＇" as a space.
        text = unicodedata.normalize("NFKC", text.translate(_APOSTROPHES))
        return " ".join(token for token in whisper(text).split() if _is_word(token))

    return normalize


def _basic_normalize(text: str) -> str:
    """Lower-case, drop punctuation and symbols but keep in-word apostrophes, collapse spaces."""
    text = unicodedata.normalize("NFKC", text.translate(_APOSTROPHES)).lower()  # apostrophes first, as in english
    # Only punctuation (P*) and symbols (S*): combining marks (M*) are part of letters in many
    # scripts, and turning them into spaces would split words.
    text = "".join(" " if unicodedata.category(c)[0] in "PS" and c != "'" else c for c in text)
    return _collapse(_LOOSE_APOSTROPHE.sub(" ", text))


@functools.cache
def get_normalizer(name: str) -> Callable[[str], str]:
    """Return the normalizer called `name` (one of `NORMALIZERS`); built once, then cached."""
    if name == "whisper":
        return _whisper()
    if name == "english":
        return _english()
    if name == "basic":
        return _basic_normalize
    if name == "none":
        return _collapse
    raise ValueError(f"unknown normalizer {name!r}; choose one of: {', '.join(NORMALIZERS)}")
