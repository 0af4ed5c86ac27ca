"""Score a model on sets of cuts: decode, normalize, count errors.

Cuts are decoded longest first in batches of [eval] batch_size clips (or batch_seconds of
audio); each result is put back at its cut's position in the set, so scores and per-utterance
lines are the same for any batch size, and for any number of ranks (each decoding a share).
"""

from __future__ import annotations

import time

from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Protocol

import torch
from lhotse.cut import Cut
from lhotse.utils import fastcopy

from macasr.config import Config
from macasr.data.collate import Batch
from macasr.data.loader import CutDataset, build_loader, eval_sampler, indexed, transcript
from macasr.data.manifest import manifest_stem, open_cuts
from macasr.errors import ConfigError
from macasr.evaluate.wer import DatasetScore, score
from macasr.infer.decode import Decoded, decode_loader
from macasr.infer.segment import SpeechGate
from macasr.model.decoding import DecodingOptions
from macasr.model.speech_llm import SpeechLLM


class Share(Protocol):
    """How ranks split a set to decode and merge what they decoded (`macasr.train.ddp.RankShare`)."""

    def mine(self, cuts: Sequence[Cut]) -> list[Cut]: ...

    def merge(self, decoded: Decoded) -> Decoded: ...


def decoding_options(cfg: Config) -> DecodingOptions:
    e = cfg.eval
    return DecodingOptions(
        max_tokens_per_second=e.max_tokens_per_second, max_tokens_base=e.max_tokens_base, num_beams=e.num_beams,
        length_penalty=e.length_penalty, repeat_ngram_stop=e.repeat_ngram_stop,
    )


def evaluate_cuts(
    model: SpeechLLM, cuts: Sequence[Cut], name: str, cfg: Config, device: torch.device, precision: str,
    num_workers: int = 0, on_batch: Callable[[Batch], None] | None = None, share: Share | None = None,
) -> DatasetScore:
    """Decode and score one dataset. The score carries the lines of clips that could not be read
    and were left out (`skipped`) and of clips that were read but look wrong (`warnings`);
    `[data] on_bad_clip = "error"` stops at the first unreadable clip instead (DataError).
    Results are in the order of `cuts`, whatever the batching. With `[eval] vad`, clips the VAD
    finds no speech in are not decoded (empty hypothesis, listed in `Decoded.no_speech`). With `share` (training on several
    ranks), this process decodes `share.mine(cuts)` and scores the whole set from `share.merge`.
    """
    cuts = list(indexed(cuts))
    mine = share.mine(cuts) if share is not None else cuts
    decoded = Decoded()
    started = time.perf_counter()
    if mine:  # a rank may get no clip of a validation set smaller than the number of ranks
        sampler = eval_sampler(mine, cfg.eval.batch_size, cfg.eval.batch_seconds)
        # The VAD always runs: with [eval] vad off it only flags clips without speech, which are
        # decoded all the same, so the report says what the model invents on them.
        dataset = CutDataset(model.encoder.featurizer, speech_gate=SpeechGate(), decode_without_speech=not cfg.eval.vad)
        loader = build_loader(dataset, sampler, num_workers)
        decoded = decode_loader(model, loader, decoding_options(cfg), device, precision, on_batch, cfg.data.on_bad_clip)
    if share is not None:
        decoded = share.merge(decoded)
    seconds = time.perf_counter() - started  # wall time of the decoding (of every rank, once merged)
    kept = [i for i in range(len(cuts)) if i in decoded.hypotheses]
    return score(
        name, [cuts[i].id for i in kept], [transcript(cuts[i]) for i in kept],
        [decoded.hypotheses[i] for i in kept], [cuts[i].duration for i in kept], cfg.eval.normalizer,
        # sorted: the lines come in decoding order, which depends on batching and ranks
        skipped=sorted(decoded.skipped), warnings=sorted(decoded.warnings), stops=[decoded.stop_reasons[i] for i in kept],
        no_speech=[i in decoded.no_speech for i in kept], decode_seconds=seconds,
    )


def _name_candidates(path: Path) -> list[str]:
    """Ever longer names for a manifest: its stem, then with its folders ("b/test", "a/b/test"),
    then the full path with extension (which only the same file shares)."""
    parts = (*path.resolve().parent.parts, manifest_stem(path))
    return ["/".join(parts[-k:]) for k in range(1, len(parts))] + [str(path.resolve())]


def _distinct_names(paths: Sequence[Path], taken: Collection[str]) -> list[str]:
    """The shortest names that tell `paths` apart and clash with none of `taken`:
    a/test.jsonl and b/test.jsonl become "a/test" and "b/test"; a lone test.jsonl stays "test"."""
    candidates = [_name_candidates(p) for p in paths]
    depth = [0] * len(paths)
    while True:
        names = [c[d] for c, d in zip(candidates, depth, strict=True)]
        clashing = [i for i, n in enumerate(names) if n in taken or names.count(n) > 1]
        if not clashing:
            return names
        longer = [i for i in clashing if depth[i] + 1 < len(candidates[i])]
        if not longer:
            i = clashing[0]
            raise ConfigError(f"--manifest {paths[i]}: its name `{names[i]}` is already a dataset name; rename one of them")
        for i in longer:
            depth[i] += 1


def named_sets(cfg: Config, manifests: Sequence[str], datasets: Sequence[str]) -> dict[str, list[str]]:
    """Which manifests to score, by dataset name: --dataset names looked up in `[datasets.*]`,
    then --manifest files named by their stem (with folders added until every name is distinct);
    with neither, the datasets of `[eval] test_sets`. A file given twice is scored once."""
    chosen: dict[str, list[str]] = {}
    for name in datasets:
        if name not in cfg.datasets:
            known = ", ".join(cfg.datasets) or "none"
            raise ConfigError(f"--dataset {name}: no dataset named `{name}` in [datasets.*] (the config names: {known}; "
                              "by default the checkpoint's config, --config FILE uses another)")
        chosen[name] = list(cfg.datasets[name].manifest)
    seen = {Path(path).resolve() for paths in chosen.values() for path in paths}  # a file named twice is scored once
    paths = []
    for path in map(Path, manifests):
        if path.resolve() not in seen:
            seen.add(path.resolve())
            paths.append(path)
    for name, path in zip(_distinct_names(paths, set(chosen)), paths, strict=True):
        chosen[name] = [str(path)]
    if not chosen:
        chosen = {name: list(cfg.datasets[name].manifest) for name in cfg.eval.test_sets}
    if not chosen:
        raise ConfigError("nothing to evaluate: give --manifest FILE or --dataset NAME ([eval] test_sets is empty)")
    return chosen


def _unique_ids(parts: list[list[Cut]], paths: list[Path]) -> list[Cut]:
    """The cuts of a dataset's manifests, in order. Ids need only be unique per manifest, and
    reports are keyed by them: when two manifests of one dataset share an id, each manifest's ids
    get its distinct name as a prefix ("a/test/test-000001", "b/test/test-000001")."""
    ids = [cut.id for part in parts for cut in part]
    if len(set(ids)) == len(ids):
        return [cut for part in parts for cut in part]
    prefixes = _distinct_names(paths, set())
    return [fastcopy(cut, id=f"{prefix}/{cut.id}") for prefix, part in zip(prefixes, parts, strict=True) for cut in part]


def evaluate_sets(
    model: SpeechLLM, cfg: Config, sets: dict[str, list[str]], device: torch.device, precision: str,
    progress: Callable[[str, int], Callable[[Batch], None]] | None = None, share: Share | None = None,
) -> list[DatasetScore]:
    """Score each named set of manifests → scores in order (each with its skipped clips).

    Every manifest is opened (and checked) before any decoding, so a bad line in the last one
    costs nothing. `progress(name, n_utterances)` may return a per-batch callback (for a progress bar).
    With `share` (`macasr.train.ddp.RankShare`, several ranks), each rank decodes its share of
    every set and every rank gets the scores of the whole sets.
    """
    allow = cfg.data.allow_commands
    opened = {name: [open_cuts(path, allow_commands=allow) for path in paths] for name, paths in sets.items()}
    scores = []
    for name, parts in opened.items():
        cuts = _unique_ids([list(part) for part in parts], [Path(p) for p in sets[name]])
        on_batch = progress(name, len(share.mine(cuts) if share else cuts)) if progress else None  # this rank's clips
        scores.append(evaluate_cuts(model, cuts, name, cfg, device, precision, on_batch=on_batch, share=share))
    return scores
