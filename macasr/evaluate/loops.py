"""Repeated n-gram loops in a transcript: the commonest way a speech LLM degenerates.

A hypothesis *loops* when its normalized words hold a unit of 1 to LOOP_MAX_WORDS words repeated
at least LOOP_MIN_REPEATS times back to back ("go go go", "i think so i think so i think so")
that its reference does not hold as well (a reference "no no no" makes the same words in its
hypothesis an answer, not a loop), or when decoding's repeat guard cut it (stop "repeat": the
guard ended a loop before it could grow, so its text may show fewer repeats).

Words, not tokens: the repeat guard (model/decoding.py) watches tokens while decoding; this
looks at what is scored, whatever decoding options produced it.
"""

from __future__ import annotations

from collections.abc import Sequence

LOOP_MAX_WORDS = 8  # longest repeated unit looked for, in words
LOOP_MIN_REPEATS = 3  # copies in a row that make a loop (the unit and 2 repeats of it)
STOP_REPEAT = "repeat"  # the stop reason of a hypothesis the repeat guard cut (model.decoding.STOP_REPEAT)


def looping_units(words: Sequence[str]) -> set[tuple[str, ...]]:
    """Every unit of 1..LOOP_MAX_WORDS words found LOOP_MIN_REPEATS or more times in a row.

    O(len(words) × LOOP_MAX_WORDS × LOOP_MIN_REPEATS): cheap for a transcript."""
    found = set()
    for n in range(1, LOOP_MAX_WORDS + 1):
        span = n * LOOP_MIN_REPEATS
        for start in range(len(words) - span + 1):
            unit = tuple(words[start:start + n])
            if all(tuple(words[start + k * n:start + (k + 1) * n]) == unit for k in range(1, LOOP_MIN_REPEATS)):
                found.add(unit)
    return found


def is_loop(hyp_norm: str, ref_norm: str, stop: str = "end") -> bool:
    """Whether a (normalized) hypothesis loops: the repeat guard cut it, or it repeats a unit
    LOOP_MIN_REPEATS times in a row that does not repeat so in the reference."""
    if stop == STOP_REPEAT:
        return True
    units = looping_units(hyp_norm.split())
    return bool(units) and bool(units - looping_units(ref_norm.split()))
