"""Benchmark `inference`: where users wait. Decoding speed (batched vs one by one, beam 4 vs
greedy, macasr's decoding vs transformers' `generate`), the prompt prefix cache's share of the
prefill, and the CLI's start-up time.

    python benchmarks/inference.py [--clips 8] [--reps 3] [--threads 1] [--real-encoder DIR] [--real-llm DIR]
                                   [--synthetic] [--skip-hf] [--out benchmarks/results/inference.json]

Model: openai/whisper-base + SmolLM2-135M-Instruct from local folders (`--real-encoder`,
`--real-llm`, /work/realmodels/... by default) with the default MLP connector (random weights:
no trained connector here), or, when they are absent or with `--synthetic`, a whisper-base-sized
encoder and a small Qwen3 with random weights. CPU, fp32, `--threads` torch threads, everything
under `torch.inference_mode()` as `macasr eval` and `transcribe` decode. Nothing is downloaded.

Inputs: `--clips` noise clips of 2-8 s (seed 0). An untrained connector gives no real
transcripts, and where its model would end is arbitrary, so every clip decodes exactly a
transcript-sized number of tokens: the end token is replaced by the model's least likely token
(the lowest logit after the first clip's prompt, which no search picks; checked: every clip
reaches its cap) and the cap is `TOKENS_PER_SECOND` × seconds + `TOKENS_BASE` (what English
speech costs in a BPE vocabulary), with the repeat guard off. Both sides of every comparison do
the same work and, where they must, give the same tokens (checked and reported).

Sections of the JSON:
- "batched": RTFx (audio seconds / wall seconds; encoder, connector and decoding) of greedy
  decoding of all clips in one batch against one clip at a time (goal: batched >= 5x).
- "beam": beam search (4 beams) against greedy, both batched.
- "vs_transformers": decoding alone (the prompt embeddings built beforehand) by macasr's
  `greedy_hypotheses` / `beam_search` and by transformers' `generate(inputs_embeds=...)` on the
  same left-padded embeddings, the same mask and the same number of new tokens (eos off); macasr
  both without and with the prefix cache (goal: no slower; beam 4 faster).
- "prefix": the prefill (the first LLM forward over the prompt) with the prefix in every row
  against the cached prefix, and the whole batched greedy decode with the cache off and on.
- "cli_startup": wall seconds of `python -m macasr --help` and `macasr config init FILE` in fresh
  processes (median of `--startup-runs`; goal <= 0.5 s).
- "longform": a hook for the 10-minute-file measurement (benchmarks/longform.py), see `longform`.

Each timing takes the best of `--reps` repetitions (the least disturbed on a shared machine)
and reports the median beside it; a busy machine shows as best and median far apart.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from macasr import config as config_module, testing  # noqa: E402
from macasr.config import Config  # noqa: E402
from macasr.data.collate import Example, collate  # noqa: E402
from macasr.model.decoding import beam_search, greedy_hypotheses  # noqa: E402

from common import RESULTS, write_result  # benchmarks/common.py (scripts run from this folder)

REAL_ENCODER = Path("/work/realmodels/whisper-base")
REAL_LLM = Path("/work/realmodels/smollm2-135m-instruct")
WHISPER_BASE = {"d_model": 512, "layers": 6, "heads": 8, "num_mel_bins": 80}  # openai/whisper-base's encoder
SMALL_LLM = {"hidden": 256, "layers": 4, "heads": 4, "kv_heads": 2}
WORDS = "the cat sat on a mat while seven green apples fell from the old tree near the river bank".split()
SECONDS = (2.0, 8.0)  # clip lengths are drawn uniformly from this range
TOKENS_PER_SECOND = 3.5  # new tokens a clip decodes per second of audio (English speech in a BPE vocabulary)
TOKENS_BASE = 2
BEAMS = 4


def best_and_median(run: Callable[[], Any], reps: int) -> tuple[dict[str, float], Any]:
    """Wall seconds of `reps` runs of `run` (best, median, all) after one untimed warm-up run
    (first-call allocations), and the last run's result."""
    times, result = [], run()
    for _ in range(reps):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return {"best_s": round(min(times), 4), "median_s": round(statistics.median(times), 4), "runs_s": [round(t, 4) for t in times]}, result


def build(args: argparse.Namespace, folder: Path) -> tuple[Any, dict[str, Any]]:
    """The model (eval mode, end token off) and what it is."""
    from macasr.model.build import build_model

    if not args.synthetic and args.real_encoder.is_dir() and args.real_llm.is_dir():
        cfg = config_module.replace(Config(), **{"model.encoder.path": str(args.real_encoder), "model.llm.path": str(args.real_llm),
                                                 "train.device": "cpu"})
        described = {"encoder": str(args.real_encoder), "llm": str(args.real_llm), "connector": "mlp (default), random weights"}
    else:
        tokenizer = testing.train_tokenizer([" ".join(WORDS)] * 20, vocab_size=200)
        whisper = testing.save_tiny_whisper(folder / "whisper-base-sized", **WHISPER_BASE)
        llm = testing.save_tiny_qwen3(folder / "llm", tokenizer, **SMALL_LLM)
        cfg = config_module.replace(Config(), **{"model.encoder.path": str(whisper), "model.llm.path": str(llm), "train.device": "cpu"})
        described = {"encoder": {"sized_as": "openai/whisper-base", **WHISPER_BASE, "weights": "random"},
                     "llm": {"family": "qwen3", **SMALL_LLM, "weights": "random"}, "connector": "mlp (default), random weights"}
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    described.update(prefix_tokens=len(model.prompt.prefix), suffix_tokens=len(model.prompt.suffix),
                     llm_parameters=sum(p.numel() for p in model.llm.parameters()))
    return model, described


def switch_off_the_end(model: Any, example: Example) -> int:
    """Make the end id the token least likely after `example`'s prompt, so no clip ends before its
    cap (the benchmark checks that); returns it."""
    batch = collate([example])
    embeds, mask, positions, _ = prompt_embeddings(model, batch, cached=False)
    logits = model.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits[0, -1]
    end = int(logits.argmin())
    model.prompt = type(model.prompt)(model.prompt.prefix, model.prompt.suffix, end)
    return end


def clips(model: Any, count: int) -> list[Example]:
    """`count` noise clips of 2-8 s (seed 0), featurized as the loader would."""
    rng = np.random.default_rng(0)
    examples = []
    for i in range(count):
        duration = float(rng.uniform(*SECONDS))
        wave = (rng.standard_normal(int(duration * 16_000)) * 0.1).astype(np.float32)
        examples.append(Example(i, f"c{i}", "", duration, model.encoder.featurizer(wave), []))
    return examples


def caps(durations: list[float]) -> list[int]:
    return [TOKENS_BASE + math.ceil(TOKENS_PER_SECOND * d) for d in durations]


def decode(model: Any, batch: Any, beams: int) -> list[list[int]]:
    """What `SpeechLLM.generate_with_stops` does, with this benchmark's caps: tokens per clip."""
    speech, lengths = model.encode_speech(batch.features, batch.feature_lengths)
    cached = model.cached_prefix(len(speech))
    embeds, mask, positions = model._layout(speech, lengths, cached=cached)
    limit = caps(batch.durations)
    if beams > 1:
        found = beam_search(model.llm, embeds, mask, positions, limit, model.prompt.end_id, beams, prefix=cached)
    else:
        found = greedy_hypotheses(model.llm, embeds, mask, positions, limit, model.prompt.end_id, prefix=cached)
    return [h.tokens for h in found]


def rtfx(audio: float, timing: dict[str, float]) -> dict[str, float]:
    return {"rtfx_best": round(audio / timing["best_s"], 2), "rtfx_median": round(audio / timing["median_s"], 2)}


def batched_vs_single(model: Any, examples: list[Example], reps: int) -> dict[str, Any]:
    audio = sum(e.duration for e in examples)
    batch = collate(examples)
    batched, together = best_and_median(lambda: decode(model, batch, 1), reps)
    singles = [collate([e]) for e in examples]
    single, alone = best_and_median(lambda: [decode(model, b, 1)[0] for b in singles], reps)
    limit = caps([e.duration for e in examples])
    return {
        "audio_s": round(audio, 2), "new_tokens": sum(limit), "every_clip_reached_its_cap": [len(t) for t in together] == limit,
        "batched": {**batched, **rtfx(audio, batched)}, "one_by_one": {**single, **rtfx(audio, single)},
        "speedup_best": round(single["best_s"] / batched["best_s"], 2),
        "speedup_median": round(single["median_s"] / batched["median_s"], 2),
        "same_tokens": together == alone,
    }


def beam_vs_greedy(model: Any, examples: list[Example], reps: int) -> dict[str, Any]:
    audio, batch = sum(e.duration for e in examples), collate(examples)
    greedy, _ = best_and_median(lambda: decode(model, batch, 1), reps)
    beam, _ = best_and_median(lambda: decode(model, batch, BEAMS), reps)
    return {"beams": BEAMS, "greedy": {**greedy, **rtfx(audio, greedy)}, "beam": {**beam, **rtfx(audio, beam)},
            "beam_cost_best": round(beam["best_s"] / greedy["best_s"], 2)}


def prompt_embeddings(model: Any, batch: Any, cached: bool) -> tuple[Any, ...]:
    speech, lengths = model.encode_speech(batch.features, batch.feature_lengths)
    past = model.cached_prefix(len(speech)) if cached else None
    return (*model._layout(speech, lengths, cached=past), past)


def hf_generate(model: Any, embeds: torch.Tensor, mask: torch.Tensor, new_tokens: int, beams: int) -> list[list[int]]:
    """transformers' `generate` on the same embeddings, with the same end id and cap."""
    from transformers import GenerationConfig

    settings = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, num_beams=beams, eos_token_id=model.prompt.end_id,
                                pad_token_id=model.prompt.end_id, length_penalty=1.0, early_stopping=False, use_cache=True)
    out = model.llm.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=settings)
    return out.tolist()  # with inputs_embeds, only the new tokens come back


def vs_transformers(model: Any, examples: list[Example], reps: int) -> dict[str, Any]:
    """Decoding alone, every clip `new_tokens` tokens, both libraries on the same embeddings."""
    batch = collate(examples)
    new_tokens = caps([statistics.mean(e.duration for e in examples)])[0]
    limit, end = [new_tokens] * len(examples), model.prompt.end_id
    embeds, mask, positions, _ = prompt_embeddings(model, batch, cached=False)
    cached = prompt_embeddings(model, batch, cached=True)
    results: dict[str, Any] = {"new_tokens_per_clip": new_tokens, "clips": len(examples)}
    for beams in (1, BEAMS):
        def ours(embeds=embeds, mask=mask, positions=positions, past=None):
            if beams > 1:
                return [h.tokens for h in beam_search(model.llm, embeds, mask, positions, limit, end, beams, prefix=past)]
            return [h.tokens for h in greedy_hypotheses(model.llm, embeds, mask, positions, limit, end, prefix=past)]

        def ours_cached():
            c_embeds, c_mask, c_positions, _ = cached
            return ours(c_embeds, c_mask, c_positions, model.cached_prefix(len(examples)))

        mine, mine_tokens = best_and_median(ours, reps)
        mine_cached, cached_tokens = best_and_median(ours_cached, reps)
        theirs, their_tokens = best_and_median(lambda: hf_generate(model, embeds, mask, new_tokens, beams), reps)
        results["greedy" if beams == 1 else f"beam{beams}"] = {
            "macasr": mine, "macasr_prefix_cache": mine_cached, "transformers_generate": theirs,
            "transformers_over_macasr_best": round(theirs["best_s"] / mine["best_s"], 2),
            "transformers_over_macasr_median": round(theirs["median_s"] / mine["median_s"], 2),
            "transformers_over_macasr_cached_best": round(theirs["best_s"] / mine_cached["best_s"], 2),
            "same_tokens_as_transformers": mine_tokens == their_tokens,
            "same_tokens_with_prefix_cache": mine_tokens == cached_tokens,
            "tokens_per_clip_transformers": sorted({len(t) for t in their_tokens}),
        }
    return results


def prefix_share(model: Any, examples: list[Example], reps: int) -> dict[str, Any]:
    """The prefill with the prefix in every row against the cached prefix (its states copied into
    a fresh cache per batch, as decoding does), and a whole greedy decode with the cache off and on."""
    from macasr.model.decoding import cache_kwargs

    batch = collate(examples)
    full = prompt_embeddings(model, batch, cached=False)
    rows = prompt_embeddings(model, batch, cached=True)

    def prefill(prompt: tuple[Any, ...], cached: bool) -> None:
        embeds, mask, positions, _ = prompt
        past = model.cached_prefix(len(examples)) if cached else None
        model.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, logits_to_keep=1, **cache_kwargs(model.llm, past))

    off, _ = best_and_median(lambda: prefill(full, False), reps)
    on, _ = best_and_median(lambda: prefill(rows, True), reps)
    model.use_prefix_cache = False
    decode_off, tokens_off = best_and_median(lambda: decode(model, batch, 1), reps)
    model.use_prefix_cache = True
    decode_on, tokens_on = best_and_median(lambda: decode(model, batch, 1), reps)
    prefix = len(model.prompt.prefix)
    return {
        "row_tokens_longest": int(full[0].shape[1]), "prefix_tokens": prefix,
        "prefix_share_of_longest_row": round(prefix / full[0].shape[1], 3),
        "prefill_prefix_in_rows": off, "prefill_prefix_cached": on,
        "prefill_saving_best": round(1 - on["best_s"] / off["best_s"], 3),
        "prefill_saving_median": round(1 - on["median_s"] / off["median_s"], 3),
        "decode_cache_off": decode_off, "decode_cache_on": decode_on,
        "decode_saving_best": round(1 - decode_on["best_s"] / decode_off["best_s"], 3),
        "same_tokens": tokens_off == tokens_on,
    }


def cli_startup(runs: int) -> dict[str, Any]:
    """Wall seconds of fresh `python -m macasr ...` processes run from the repository root
    (this checkout's macasr), median and all runs; and whether torch was imported."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        commands = {"--help": ["--help"], "config init": ["config", "init", str(Path(tmp) / "x.toml"), "--force"]}
        for name, words in commands.items():
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                subprocess.run([sys.executable, "-m", "macasr", *words], cwd=ROOT, check=True, capture_output=True)
                times.append(time.perf_counter() - start)
            results[name] = {"median_s": round(statistics.median(times), 3), "best_s": round(min(times), 3), "runs_s": [round(t, 3) for t in times]}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    results["python_alone_s"] = round(time.perf_counter() - start, 3)  # the interpreter's own start, for scale
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, transformers"], check=True)
    results["import_torch_transformers_s"] = round(time.perf_counter() - start, 3)  # what a model command adds
    return results


# ----------------------------------------------------------------------------- long-form (hook)
# LONG-FORM HOOK, to be wired to benchmarks/longform.py (another part of issue 10): transcribe a
# 10-minute file with `macasr transcribe` (VAD → speech segments of <= 30 s → batched decoding →
# stitched), and report its RTFx and peak memory. Until it is wired, the JSON says so.
def longform(args: argparse.Namespace) -> dict[str, Any]:
    return {"status": "not measured by this script: wire benchmarks/longform.py here (10-minute file: RTFx, peak memory)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: no thread spins while another waits for a shared core)")
    parser.add_argument("--startup-runs", type=int, default=5)
    parser.add_argument("--real-encoder", type=Path, default=REAL_ENCODER)
    parser.add_argument("--real-llm", type=Path, default=REAL_LLM)
    parser.add_argument("--synthetic", action="store_true", help="the small random model even when the real ones are there")
    parser.add_argument("--skip-hf", action="store_true", help="leave out the comparison with transformers' generate")
    parser.add_argument("--out", type=Path, default=RESULTS / "inference.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    report: dict[str, Any] = {"benchmark": "inference", "cli_startup": cli_startup(args.startup_runs)}
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        model, described = build(args, Path(tmp))
        examples = clips(model, args.clips)
        described["end_id_used"] = switch_off_the_end(model, examples[0])
        report["setup"] = {
            "model": described, "clips": args.clips, "clip_seconds": [round(e.duration, 2) for e in examples],
            "new_tokens": f"{TOKENS_BASE} + ceil({TOKENS_PER_SECOND} x seconds) per clip, end token off, repeat guard off",
            "reps": args.reps, "dtype": "fp32", "device": "cpu", "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "load_average_1min_at_start": round(load, 2),
        }
        print("batched vs one by one ...", file=sys.stderr)
        report["batched"] = batched_vs_single(model, examples, args.reps)
        print("beam vs greedy ...", file=sys.stderr)
        report["beam"] = beam_vs_greedy(model, examples, args.reps)
        print("prefix cache ...", file=sys.stderr)
        report["prefix"] = prefix_share(model, examples, args.reps)
        if not args.skip_hf:
            print("vs transformers' generate ...", file=sys.stderr)
            report["vs_transformers"] = vs_transformers(model, examples, args.reps)
    report["longform"] = longform(args)
    report["setup"]["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    write_result(args.out, report)


if __name__ == "__main__":
    main()
