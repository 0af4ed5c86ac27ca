"""Training targets from corpora that write text differently.

LibriSpeech is upper-case without punctuation, Common Voice cased and punctuated, Fisher and
Switchboard carry annotation tags. A model trained on their union learns every convention at once
unless the targets are brought to one; `[datasets.NAME] text` and `drop_annotations` choose how,
per dataset (docs/data.md). Evaluation references are not touched here: WER normalization is
`[eval] normalizer`'s job.

Annotation conventions removed by `drop_annotations` (words are kept):
- `[laughter]`, `[noise]`, `[vocalized-noise]`, `[sigh]` ... : non-speech events, dropped;
  `[laughter-yes]` (a word said laughing, Switchboard MS-State) keeps the word: "yes".
- `<unk>`, `<noise>`, `{breath}` ... : markers, dropped.
- `(( ))` and `(( words ))`: unintelligible or uncertain speech (Fisher, LDC): the brackets go,
  any words inside stay.
- partial words: `th-`, `-tion`, `th[e]-`, `-[th]at`: dropped (a fragment is not a word the model
  should learn to spell).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from macasr.evaluate.normalize import get_normalizer

TEXT_MODES = ("keep", "lower", "whisper", "basic")

_WORD_IN_EVENT = re.compile(r"\[(?:laughter|laugh)-([^\]\s]+)\]", re.IGNORECASE)  # [laughter-yes] → yes
_EVENT = re.compile(r"\[[^\]]*\]|<[^>]*>|\{[^}]*\}")  # [noise], <unk>, {breath}
_UNCERTAIN = re.compile(r"\(\(|\)\)")  # (( words )) → words
_PARTIAL = re.compile(r"^-|-$")  # th- or -tion


def drop_annotations(text: str) -> str:
    """`text` without annotation tags and partial words (module docstring), spaces collapsed."""
    text = _WORD_IN_EVENT.sub(r"\1", text)
    words = [w for w in _UNCERTAIN.sub(" ", text).split() if not _PARTIAL.search(w)]
    # A partial word may hold brackets (th[e]-); it went above. Tags go after, so "[noise]-" never survives.
    return " ".join(_EVENT.sub(" ", " ".join(words)).split())


def _mode(mode: str) -> Callable[[str], str]:
    if mode == "keep":
        return lambda text: text
    if mode == "lower":
        return str.lower
    if mode in ("whisper", "basic"):
        return get_normalizer(mode)
    raise ValueError(f"unknown text mode {mode!r}; expected one of {', '.join(TEXT_MODES)}")


def normalize_target(text: str, mode: str, drop_annotations_: bool) -> str:
    """The training target for a transcript: annotations dropped first (when asked), then the
    dataset's `text` mode (keep, lower, whisper, basic). Raises ValueError for another mode."""
    if drop_annotations_:
        text = drop_annotations(text)
    return _mode(mode)(text)
