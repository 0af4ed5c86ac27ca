"""Word and character error rates, per dataset and overall.

Error counts, not rates, are what get summed: the overall WER of several datasets is total
errors over total reference words, not a mean of per-dataset rates. Rates are fractions
(0.05 = 5 %); reports turn them into percentages.

Alignment is jiwer's (Levenshtein via rapidfuzz). Pairs where either side is empty are counted
here instead, because some jiwer versions refuse empty references and the answer is trivial:
an empty reference against a k-word hypothesis is k insertions, a k-word reference against an
empty hypothesis is k deletions. Characters are counted the jiwer way: after whitespace is
collapsed, the single space between two words is a character too. Every normalizer is treated
alike here: a reference that is empty after normalization is counted in `empty_references`.

Beside the error counts, a score holds what tells *why* a WER is bad (rates as properties, None
where the denominator is 0): hypotheses that loop (`loops.is_loop`), empty outputs for a
non-empty reference, outputs on clips a voice activity detector found no speech in, the
hypothesis/reference length ratio (words, pooled) and RTFx (audio seconds decoded per wall
second of decoding; a measurement, not a result: it differs between runs).

A dataset can have no WER at all: when none of its clips could be read (0 utterances) or when
every reference is empty after normalization (0 reference words). `DatasetScore.problem` then
says which, and reports show the rate as missing rather than as 0.00 % or a made-up number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import jiwer

from macasr.evaluate.loops import is_loop
from macasr.evaluate.normalize import get_normalizer


@dataclass(frozen=True)
class ErrorCounts:
    """Edit-distance counts against the reference; add two to pool them."""

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    hits: int = 0
    ref_words: int = 0
    char_errors: int = 0
    ref_chars: int = 0

    @property
    def hyp_words(self) -> int:
        """Words of the (normalized) hypotheses: every one is a hit, a substitution or an insertion."""
        return self.hits + self.substitutions + self.insertions

    @property
    def word_errors(self) -> int:
        """Substitutions + deletions + insertions."""
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        """Word error rate as a fraction; an empty reference counts as one word (never inf)."""
        return self.word_errors / max(self.ref_words, 1)

    @property
    def cer(self) -> float:
        """Character error rate as a fraction; an empty reference counts as one character."""
        return self.char_errors / max(self.ref_chars, 1)

    def __add__(self, other: object) -> ErrorCounts:
        if not isinstance(other, ErrorCounts):
            return NotImplemented
        return ErrorCounts(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )


@dataclass(frozen=True)
class ErrorSpan:
    """One aligned error of an utterance (a jiwer alignment chunk other than "equal"), in normalized words."""

    type: str  # "substitute", "delete" or "insert"
    ref: str  # the reference words it concerns ("" for an insertion)
    hyp: str  # the hypothesis words ("" for a deletion)
    position: int  # index of its first reference word (an insertion: of the reference word it precedes)


@dataclass(frozen=True)
class UtteranceResult:
    """One scored utterance: raw and normalized text, its word errors (S + D + I) and where they are."""

    id: str
    reference: str
    hypothesis: str
    ref_norm: str
    hyp_norm: str
    errors: int
    stop: str = "end"  # why decoding stopped: "end", or the guard that cut it ("repeat", "max_tokens")
    alignment: tuple[ErrorSpan, ...] = ()  # the errors, in reference order
    loop: bool = False  # the hypothesis loops (`loops.is_loop`)
    no_speech: bool = False  # a voice activity detector found no speech in the clip


@dataclass(frozen=True)
class DatasetScore:
    """Scores of one dataset (or of several pooled, see `overall`).

    `utterances` counts the scored ones; `skipped` holds one line per clip that could not be
    read (not scored), `warnings` one line per clip that was read but looks wrong, `guard_stops`
    counts hypotheses a decoding guard cut (a loop or the token cap) instead of the end token.
    `loops` counts looping hypotheses, `empty_outputs` empty hypotheses of non-empty references,
    `no_speech_clips` the clips the VAD found no speech in and `no_speech_outputs` those of them
    with a non-empty hypothesis; `decode_seconds` is the wall time decoding took (None: not timed).
    Text counts are of normalized text.
    """

    name: str
    utterances: int
    hours: float
    counts: ErrorCounts
    per_utterance: tuple[UtteranceResult, ...] = ()
    empty_references: int = 0
    skipped: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    guard_stops: int = 0
    loops: int = 0
    empty_outputs: int = 0
    no_speech_clips: int = 0
    no_speech_outputs: int = 0
    decode_seconds: float | None = None

    @property
    def wer(self) -> float:
        """WER as a fraction; meaningless when `problem` is set (check it before showing this)."""
        return self.counts.wer

    @property
    def cer(self) -> float:
        return self.counts.cer

    @property
    def loop_rate(self) -> float | None:
        """Looping hypotheses per scored utterance."""
        return _ratio(self.loops, self.utterances)

    @property
    def empty_output_rate(self) -> float | None:
        """Empty hypotheses per utterance whose reference is not empty (after normalization)."""
        return _ratio(self.empty_outputs, self.utterances - self.empty_references)

    @property
    def no_speech_output_rate(self) -> float | None:
        """Non-empty hypotheses per clip the VAD found no speech in (None: no such clip, or no VAD)."""
        return _ratio(self.no_speech_outputs, self.no_speech_clips)

    @property
    def length_ratio(self) -> float | None:
        """Hypothesis words over reference words, pooled: > 1 inserts (loops), < 1 drops (early stops)."""
        return _ratio(self.counts.hyp_words, self.counts.ref_words)

    @property
    def rtfx(self) -> float | None:
        """Seconds of audio decoded per wall second of decoding (None: not timed, or nothing decoded)."""
        if self.decode_seconds is None or self.decode_seconds <= 0 or self.utterances == 0:
            return None
        return self.hours * 3600.0 / self.decode_seconds

    @property
    def problem(self) -> str | None:
        """Why this dataset has no WER (one line), or None when it has one."""
        if self.utterances == 0:
            return f"no utterance could be scored ({_plural(len(self.skipped), 'clip')} skipped as unreadable)"
        if self.counts.ref_words == 0:
            return f"every reference is empty after normalization ({_plural(self.utterances, 'utterance')})"
        return None


def _ratio(numerator: int, denominator: int) -> float | None:
    """numerator / denominator, or None for 0/0-like cases (shown as n/a, never as 0)."""
    return numerator / denominator if denominator > 0 else None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _collapse(text: str) -> str:
    """Single-space words so that jiwer's splitting and ours agree on what a word is."""
    return " ".join(text.split())


def _check_lengths(**sequences: Sequence[object]) -> None:
    """A length mismatch means a misaligned hypothesis file: fail loudly, never zip-truncate."""
    lengths = {name: len(seq) for name, seq in sequences.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise ValueError(f"sequences to score differ in length: {detail}")


def _empty_pair_counts(ref: str, hyp: str) -> tuple[ErrorCounts, tuple[ErrorSpan, ...]]:
    """Counts and errors of a pair where at least one side is empty (both already collapsed):
    the whole reference deleted, or the whole hypothesis inserted."""
    ref_words, hyp_words = len(ref.split()), len(hyp.split())
    counts = ErrorCounts(
        deletions=ref_words,
        insertions=hyp_words,
        ref_words=ref_words,
        char_errors=len(ref) + len(hyp),
        ref_chars=len(ref),
    )
    span = ErrorSpan("delete", ref, "", 0) if ref else ErrorSpan("insert", "", hyp, 0)
    return counts, (span,) if ref or hyp else ()


def _spans(alignment: Sequence[jiwer.AlignmentChunk], ref: Sequence[str], hyp: Sequence[str]) -> tuple[ErrorSpan, ...]:
    """The non-equal chunks of one aligned pair, with their words."""
    return tuple(
        ErrorSpan(c.type, " ".join(ref[c.ref_start_idx:c.ref_end_idx]), " ".join(hyp[c.hyp_start_idx:c.hyp_end_idx]),
                  c.ref_start_idx)
        for c in alignment
        if c.type != "equal"
    )


def _span_errors(spans: Sequence[ErrorSpan]) -> int:
    """Word errors of one pair: each error span costs its longer side."""
    return sum(max(len(s.ref.split()), len(s.hyp.split())) for s in spans)


def _align(refs: Sequence[str], hyps: Sequence[str]) -> tuple[ErrorCounts, list[tuple[ErrorSpan, ...]]]:
    """Total counts and each pair's aligned errors; one jiwer call for all non-empty pairs."""
    _check_lengths(refs=refs, hyps=hyps)
    refs = [_collapse(r) for r in refs]
    hyps = [_collapse(h) for h in hyps]
    per_utt: list[tuple[ErrorSpan, ...]] = [()] * len(refs)
    total = ErrorCounts()
    both = [i for i, (r, h) in enumerate(zip(refs, hyps, strict=True)) if r and h]
    for i in sorted(set(range(len(refs))) - set(both)):
        counts, per_utt[i] = _empty_pair_counts(refs[i], hyps[i])
        total += counts
    if not both:
        return total, per_utt
    ref_sub, hyp_sub = [refs[i] for i in both], [hyps[i] for i in both]
    words = jiwer.process_words(ref_sub, hyp_sub)
    chars = jiwer.process_characters(ref_sub, hyp_sub)
    for i, alignment in zip(both, words.alignments, strict=True):
        per_utt[i] = _spans(alignment, refs[i].split(), hyps[i].split())
    char_errors = chars.substitutions + chars.deletions + chars.insertions
    total += ErrorCounts(
        substitutions=words.substitutions,
        deletions=words.deletions,
        insertions=words.insertions,
        hits=words.hits,
        ref_words=words.substitutions + words.deletions + words.hits,
        char_errors=char_errors,
        ref_chars=chars.substitutions + chars.deletions + chars.hits,
    )
    return total, per_utt


def count_errors(refs: Sequence[str], hyps: Sequence[str]) -> ErrorCounts:
    """Pooled error counts of already-normalized reference/hypothesis pairs."""
    return _align(refs, hyps)[0]


def score(
    name: str,
    ids: Sequence[str],
    refs: Sequence[str],
    hyps: Sequence[str],
    durations: Sequence[float],
    normalizer: str,
    skipped: Sequence[str] = (),
    warnings: Sequence[str] = (),
    stops: Sequence[str] | None = None,
    no_speech: Sequence[bool] | None = None,
    decode_seconds: float | None = None,
) -> DatasetScore:
    """Normalize with `normalizer`, then score one dataset; `durations` are in seconds.

    `skipped` and `warnings` (one line per clip) are kept on the result for tables and reports;
    `stops` gives each hypothesis's stop reason (default: all "end"); `no_speech` flags the
    clips a voice activity detector found no speech in (default: none); `decode_seconds` is the
    wall time their decoding took (for RTFx).
    """
    stops = ["end"] * len(ids) if stops is None else stops
    no_speech = [False] * len(ids) if no_speech is None else no_speech
    _check_lengths(ids=ids, refs=refs, hyps=hyps, durations=durations, stops=stops, no_speech=no_speech)
    normalize = get_normalizer(normalizer)
    ref_norm = [normalize(r) for r in refs]
    hyp_norm = [normalize(h) for h in hyps]
    counts, spans = _align(ref_norm, hyp_norm)
    per_utterance = tuple(
        UtteranceResult(str(i), r, h, rn, hn, _span_errors(a), stop, a, is_loop(hn, rn, stop), bool(silent))
        for i, r, h, rn, hn, a, stop, silent in zip(ids, refs, hyps, ref_norm, hyp_norm, spans, stops, no_speech, strict=True)
    )
    return DatasetScore(
        name, len(ids), float(sum(durations)) / 3600.0, counts, per_utterance,
        empty_references=sum(1 for r in ref_norm if not r),
        skipped=tuple(skipped), warnings=tuple(warnings),
        guard_stops=sum(1 for stop in stops if stop != "end"),
        loops=sum(u.loop for u in per_utterance),
        empty_outputs=sum(1 for u in per_utterance if u.ref_norm and not u.hyp_norm),
        no_speech_clips=sum(u.no_speech for u in per_utterance),
        no_speech_outputs=sum(1 for u in per_utterance if u.no_speech and u.hyp_norm),
        decode_seconds=decode_seconds,
    )


def overall(scores: Sequence[DatasetScore]) -> DatasetScore:
    """Pool several datasets by summing counts (a micro-average); no per-utterance detail.
    The decode time is pooled only when every dataset's was measured."""
    counts = ErrorCounts()
    for s in scores:
        counts += s.counts
    seconds = [s.decode_seconds for s in scores]
    return DatasetScore(
        name="overall",
        utterances=sum(s.utterances for s in scores),
        hours=sum(s.hours for s in scores),
        counts=counts,
        empty_references=sum(s.empty_references for s in scores),
        skipped=tuple(line for s in scores for line in s.skipped),
        warnings=tuple(line for s in scores for line in s.warnings),
        guard_stops=sum(s.guard_stops for s in scores),
        loops=sum(s.loops for s in scores),
        empty_outputs=sum(s.empty_outputs for s in scores),
        no_speech_clips=sum(s.no_speech_clips for s in scores),
        no_speech_outputs=sum(s.no_speech_outputs for s in scores),
        decode_seconds=None if not seconds or None in seconds else float(sum(seconds)),  # type: ignore[arg-type]
    )
