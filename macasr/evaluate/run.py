"""Score a model on a list of utterances: decode, normalize, count errors."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from macasr.config import Config
from macasr.data.collate import Batch
from macasr.data.loader import build_loader
from macasr.data.manifest import Utterance
from macasr.evaluate.wer import DatasetScore, score
from macasr.infer.decode import decode_loader
from macasr.model.decoding import DecodingOptions
from macasr.model.speech_llm import SpeechLLM


def decoding_options(cfg: Config) -> DecodingOptions:
    e = cfg.eval
    return DecodingOptions(
        max_tokens_per_second=e.max_tokens_per_second, max_tokens_base=e.max_tokens_base, num_beams=e.num_beams,
        length_penalty=e.length_penalty, repeat_ngram_stop=e.repeat_ngram_stop,
    )


def evaluate_utterances(
    model: SpeechLLM, utterances: Sequence[Utterance], name: str, cfg: Config, device: torch.device, precision: str,
    num_workers: int = 0, on_batch: Callable[[Batch], None] | None = None,
) -> tuple[DatasetScore, list[str]]:
    """→ (the dataset's score, lines for clips that could not be read and were left out)."""
    loader = build_loader(
        utterances, model.encoder.featurizer, batch_size=cfg.eval.batch_size, shuffle=False,
        num_workers=num_workers, on_bad_clip=cfg.data.on_bad_clip,
    )
    decoded = decode_loader(model, loader, decoding_options(cfg), device, precision, on_batch)
    hyps, skipped = decoded.hypotheses, decoded.skipped
    kept = [i for i in range(len(utterances)) if i in hyps]
    result = score(
        name, [utterances[i].id for i in kept], [utterances[i].text for i in kept], [hyps[i] for i in kept],
        [utterances[i].duration for i in kept], cfg.eval.normalizer,
    )
    return result, skipped


def named_sets(cfg: Config, manifests: Sequence[str], datasets: Sequence[str]) -> dict[str, str]:
    """Which manifests to score: --manifest files by their stem, --dataset names looked up in
    `[eval] datasets`; with neither, every dataset the config names."""
    from pathlib import Path

    from macasr.errors import ConfigError

    chosen: dict[str, str] = {}
    for name in datasets:
        if name not in cfg.eval.datasets:
            known = ", ".join(cfg.eval.datasets) or "none"
            raise ConfigError(f"[eval] datasets: no dataset named `{name}` (the config names: {known})")
        chosen[name] = cfg.eval.datasets[name]
    for path in manifests:
        chosen[Path(path).stem] = str(path)
    if not chosen:
        chosen = dict(cfg.eval.datasets)
    if not chosen:
        raise ConfigError("nothing to evaluate: give --manifest FILE or --dataset NAME ([eval] datasets is empty)")
    return chosen


def evaluate_sets(
    model: SpeechLLM, cfg: Config, sets: dict[str, str], device: torch.device, precision: str,
    progress: Callable[[str, int], Callable[[Batch], None]] | None = None,
) -> tuple[list[DatasetScore], list[str]]:
    """Score each named manifest → (scores in order, lines for clips left out).

    `progress(name, n_utterances)` may return a per-batch callback (for a progress bar).
    """
    from macasr.data.manifest import load_manifest

    scores, skipped = [], []
    for name, path in sets.items():
        utterances = load_manifest(path)
        on_batch = progress(name, len(utterances)) if progress else None
        result, left_out = evaluate_utterances(model, utterances, name, cfg, device, precision, on_batch=on_batch)
        scores.append(result)
        skipped += left_out
    return scores, skipped
