"""`macasr data stats`: what a manifest holds, in one streaming pass.

Utterances, hours, speakers, duration percentiles, transcript length, and the tokens per second of
audio the transcripts need under the LLM's tokenizer: `[eval] max_tokens_per_second` caps how many
tokens the decoder may emit per second of audio, so it must cover (nearly) all of them.
Per-utterance numbers are kept as float arrays (8 bytes each), never as a list of cuts.
"""

from __future__ import annotations

import dataclasses
import functools
from array import array
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from macasr.data.manifest import open_cuts
from macasr.errors import DataError

TOKENIZE_BATCH = 512  # transcripts tokenized together (fast tokenizers batch in Rust)


@dataclasses.dataclass
class ManifestStats:
    path: str
    label: str  # the dataset's name, or the manifest's file name
    cuts: int
    seconds: float
    speakers: int | None  # None: the manifest names no speakers
    duration: dict[str, float]  # p5, p50, p95, max (seconds)
    chars: dict[str, float]  # p50, p95, max (characters per transcript)
    tokens_per_second: dict[str, float] | None  # p50, p95, p99, max; None without a tokenizer
    over_cap: int | None = None  # clips whose target (plus the end token) exceeds the decoder's cap; None: not counted


def percentiles(values: array, points: Iterable[int | str]) -> dict[str, float]:
    data = np.frombuffer(values, dtype=np.float64) if len(values) else np.zeros(1)
    return {("max" if p == "max" else f"p{p}"): float(data.max() if p == "max" else np.percentile(data, p)) for p in points}


def _count_tokens(tokenizer: Any, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def manifest_stats(path: str | Path, tokenizer: Any | None = None, target: Callable[[str], str] | None = None,
                   label: str | None = None, cap: Callable[[float], int] | None = None) -> ManifestStats:
    """One pass over a manifest (macasr JSONL, CutSet, Shar); DataError when it has no utterance.
    `target` turns a transcript into the training target whose tokens are counted (a dataset's
    `text` / `drop_annotations`); characters are counted on the transcript as written. With a
    tokenizer and `cap` (seconds → the decoder's token cap), clips over the cap are counted."""
    durations, chars, rates = array("d"), array("d"), array("d")
    over = [0]
    speakers: set[str] = set()
    pending: list[tuple[str, float]] = []

    def flush() -> None:
        if tokenizer is not None and pending:
            counts = _count_tokens(tokenizer, [t for t, _ in pending])
            rates.extend(n / d for n, (_, d) in zip(counts, pending))
            if cap is not None:  # + 1: the end token is a target token too, as training counts it
                over[0] += sum(n + 1 > cap(d) for n, (_, d) in zip(counts, pending))
        pending.clear()

    for cut in open_cuts(path):
        text = " ".join(s.text or "" for s in cut.supervisions)
        durations.append(cut.duration)
        chars.append(len(text))
        speakers.update(s.speaker for s in cut.supervisions if s.speaker)
        pending.append((target(text) if target else text, cut.duration))
        if len(pending) >= TOKENIZE_BATCH:
            flush()
    flush()
    if not durations:
        raise DataError(f"{path}: manifest has no utterances")
    return ManifestStats(
        path=str(path), label=label or Path(path).name, cuts=len(durations), seconds=float(np.frombuffer(durations).sum()),
        speakers=len(speakers) or None,
        duration=percentiles(durations, (5, 50, 95, "max")),
        chars=percentiles(chars, (50, 95, "max")),
        tokens_per_second=percentiles(rates, (50, 95, 99, "max")) if tokenizer is not None else None,
        over_cap=over[0] if tokenizer is not None and cap is not None else None,
    )


def load_tokenizer(cfg: Any, source: str) -> Any:
    """The tokenizer of `[model.llm] path` (a folder, or the hub cache; never downloaded);
    DataError naming `source` (the config) when it is not on this machine."""
    from transformers import AutoTokenizer

    llm = cfg.model.llm
    try:
        return AutoTokenizer.from_pretrained(llm.path, local_files_only=not Path(llm.path).is_dir(),
                                             trust_remote_code=llm.trust_remote_code)
    except (OSError, ValueError) as e:
        raise DataError(f"{source}: [model.llm] path = {llm.path!r}: no tokenizer on this machine "
                        f"({type(e).__name__}); download it first or point path at a local folder") from None


def config_stats(cfg: Any, source: str, entries: Iterable[str]) -> list[ManifestStats]:
    """Stats of dataset names ([datasets.*]) or manifest paths under a config: tokens per second
    of each dataset's training targets (its `text` and `drop_annotations` applied)."""
    from macasr.data.manifest import source_for
    from macasr.data.text import normalize_target

    from macasr.evaluate.run import decoding_options

    tokenizer = load_tokenizer(cfg, source)
    options = decoding_options(cfg)
    cap = lambda seconds: options.max_new_tokens([seconds])[0]  # noqa: E731 - the decoder's own formula
    results = []
    for entry in entries:
        data = source_for(cfg, entry)
        target = functools.partial(normalize_target, mode=data.text, drop_annotations_=data.drop_annotations)
        for manifest in data.manifests:
            if entry not in cfg.datasets:  # a path: named as given, so it never looks like a dataset of that name
                label = entry
            else:
                label = data.name if len(data.manifests) == 1 else f"{data.name}: {Path(manifest).name}"
            results.append(manifest_stats(manifest, tokenizer, target, label=label, cap=cap))
    return results


def coverage_note(stats: ManifestStats, cap: float) -> str | None:
    """A warning when some clips' targets have more tokens than the decoder may emit
    (⌈[eval] max_tokens_per_second × seconds⌉ + max_tokens_base); None when the cap covers them all."""
    if not stats.over_cap:
        return None
    share = 100 * stats.over_cap / stats.cuts
    return (f"{stats.label}: {stats.over_cap:,} of {stats.cuts:,} clips ({share:.2g} %) have more target tokens than the "
            f"decoder may emit (⌈[eval] max_tokens_per_second = {cap:g} × seconds⌉ + max_tokens_base); training "
            "drops them and decoding would cut them off (raise max_tokens_per_second)")
