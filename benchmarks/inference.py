"""Benchmark `inference`: where users wait. Decoding speed (batched vs one by one, beam 4 vs
greedy, macasr's decoding vs transformers' `generate`), the prompt prefix cache's share of the
prefill, and the CLI's start-up time.

    python benchmarks/inference.py [--models demo,real] [--clips 8] [--demo-clips 50] [--reps 3] [--threads 1]
                                   [--real-encoder DIR] [--real-llm DIR] [--demo-checkpoint FILE] [--demo-manifest FILE]
                                   [--skip-hf] [--out benchmarks/results/inference.json]

Models (`--models`, each measured in turn; one with missing files is left out and the JSON says so):
- "demo": the trained demo checkpoint (`macasr demo`: Whisper d_model 64 + Qwen3 hidden 64, 0.45 M
  parameters, its LLM trained) restored as `macasr eval` restores it, decoding `--demo-clips`
  espeak-ng clips of its test set (`--demo-manifest`) with the checkpoint's own `[eval]` settings
  and its real end token: real transcripts, the cost of a small model.
- "real": openai/whisper-base + SmolLM2-135M-Instruct from local folders (`--real-encoder`,
  `--real-llm`, /work/realmodels/... by default) with the default MLP connector (random weights:
  no trained connector here); "synthetic" instead: a whisper-base-sized encoder and a small Qwen3
  with random weights.
CPU, fp32, `--threads` torch threads, everything under `torch.inference_mode()` as `macasr
eval` and `transcribe` decode. Nothing is downloaded.

Inputs of "real" and "synthetic": `--clips` noise clips of 2-8 s (seed 0). An untrained connector gives no real
transcripts, and where its model would end is arbitrary, so every clip decodes exactly a
transcript-sized number of tokens: the end token is replaced by the model's least likely token
(the lowest logit after the first clip's prompt, which no search picks; checked: every clip
reaches its cap) and the cap is `TOKENS_PER_SECOND` × seconds + `TOKENS_BASE` (what English
speech costs in a BPE vocabulary), with the repeat guard off. Both sides of every comparison do
the same work and, where they must, give the same tokens (checked and reported).

Sections of the JSON:
Per model:
- "batched": RTFx (audio seconds / wall seconds; encoder, connector and decoding) of greedy
  decoding of all clips in one batch against one clip at a time (goal: batched >= 5x).
- "beam": beam search (4 beams) against greedy, both batched.
- "vs_transformers": decoding alone (the prompt embeddings built beforehand) by macasr's
  `greedy_hypotheses` / `beam_search` and by transformers' `generate(inputs_embeds=...)` on the
  same left-padded embeddings, the same mask and the same number of new tokens (eos off); macasr
  both without and with the prefix cache (goal: no slower; beam 4 faster).
- "prefix": the prefill (the first LLM forward over the prompt) with the prefix in every row
  against the cached prefix, and the whole batched greedy decode with the cache off and on.
Once:
- "cli_startup": wall seconds of `python -m macasr --help` and `macasr config init FILE` in fresh
  processes (median of `--startup-runs`; goal <= 0.5 s).
- "longform": the demo checkpoint transcribing a 10-minute file (RTFx, peak memory; benchmarks/longform.py).

The things compared run in turn, `--reps` rounds after one warm-up run each, so a burst of load
from other processes hits them alike; each timing reports the best round (the least disturbed on
a shared machine) and the median beside it; a busy machine shows as best and median far apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
DEMO_CHECKPOINT = ROOT / "runs/demo/best.pt"  # `macasr demo` writes it; --demo-checkpoint names another
DEMO_MANIFEST = ROOT / "runs/demo/data/test.jsonl"
DEMO_REPS = 10  # at least: the demo model decodes in milliseconds, so more repetitions steady its timings


@dataclasses.dataclass
class Bench:
    """One model's measurement: the model, its clips, the token cap per clip and the end id."""

    model: Any
    examples: list[Example]
    caps: Callable[[list[float]], list[int]]  # durations → new tokens allowed per clip
    reps: int


def compare(runs: dict[str, Callable[[], Any]], reps: int) -> dict[str, tuple[dict[str, Any], Any]]:
    """Wall seconds of each of `runs` (best, median, all), run in turn `reps` times after one
    untimed warm-up run each (first-call allocations), so a burst of load from other processes
    hits them alike; and each one's last result."""
    results = {name: run() for name, run in runs.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(reps):
        for name, run in runs.items():
            start = time.perf_counter()
            results[name] = run()
            times[name].append(time.perf_counter() - start)
    return {name: ({"best_s": round(min(t), 4), "median_s": round(statistics.median(t), 4), "runs_s": [round(x, 4) for x in t]},
                   results[name]) for name, t in times.items()}


def build_random(args: argparse.Namespace, folder: Path, synthetic: bool) -> tuple[Any, dict[str, Any]]:
    """The "real" (whisper-base + SmolLM2-135M, random connector) or "synthetic" model, in eval mode."""
    from macasr.model.build import build_model

    if not synthetic:
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
    return build_model(cfg).eval(), described


def noise_clips(model: Any, count: int) -> list[Example]:
    """`count` noise clips of 2-8 s (seed 0), featurized as the loader would."""
    rng = np.random.default_rng(0)
    examples = []
    for i in range(count):
        duration = float(rng.uniform(*SECONDS))
        wave = (rng.standard_normal(int(duration * 16_000)) * 0.1).astype(np.float32)
        examples.append(Example(i, f"c{i}", "", duration, model.encoder.featurizer(wave), []))
    return examples


def transcript_caps(durations: list[float]) -> list[int]:
    return [TOKENS_BASE + math.ceil(TOKENS_PER_SECOND * d) for d in durations]


def switch_off_the_end(model: Any, example: Example) -> int:
    """Make the end id the token least likely after `example`'s prompt, so no clip ends before its
    cap (the benchmark checks that); returns it."""
    embeds, mask, positions, _ = prompt_embeddings(model, collate([example]), cached=False)
    logits = model.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits[0, -1]
    end = int(logits.argmin())
    model.prompt = type(model.prompt)(model.prompt.prefix, model.prompt.suffix, end)
    return end


def random_bench(args: argparse.Namespace, folder: Path, synthetic: bool) -> tuple[Bench, dict[str, Any]]:
    model, described = build_random(args, folder, synthetic)
    examples = noise_clips(model, args.clips)
    described.update(end_id_used=switch_off_the_end(model, examples[0]), clips=len(examples),
                     clip_seconds=[round(e.duration, 2) for e in examples],
                     new_tokens=f"{TOKENS_BASE} + ceil({TOKENS_PER_SECOND} x seconds) per clip, end token off, repeat guard off")
    return Bench(model, examples, transcript_caps, args.reps), described


def demo_bench(args: argparse.Namespace) -> tuple[Bench, dict[str, Any]]:
    """The trained demo checkpoint on the first `--demo-clips` clips of its test set."""
    import soundfile as sf

    from macasr.evaluate.run import decoding_options
    from macasr.train.checkpoint import restore_model

    restored = restore_model(args.demo_checkpoint, "cpu")
    model, options = restored.model, decoding_options(restored.config)
    rows = [json.loads(line) for line in args.demo_manifest.read_text().splitlines()[: args.demo_clips]]
    examples = []
    for i, row in enumerate(rows):
        wave, rate = sf.read(args.demo_manifest.parent / row["audio"], dtype="float32")
        assert rate == 16_000, f"{row['audio']}: {rate} Hz"
        examples.append(Example(i, row["id"], row["text"], len(wave) / rate, model.encoder.featurizer(wave), []))
    described = {"checkpoint": str(args.demo_checkpoint), "manifest": str(args.demo_manifest), "clips": len(examples),
                 "audio_s": round(sum(e.duration for e in examples), 2), "parameters": sum(p.numel() for p in model.parameters()),
                 "llm_trains": any(p.requires_grad for p in model.llm.parameters()), "prefix_tokens": len(model.prompt.prefix),
                 "new_tokens": f"its [eval] cap ({options.max_tokens_base} + {options.max_tokens_per_second}/s), its end token, "
                               f"repeat guard {options.repeat_ngram_stop}"}
    return Bench(model, examples, options.max_new_tokens, max(args.reps, DEMO_REPS)), described


def decode(bench: Bench, batch: Any, beams: int) -> list[list[int]]:
    """What `SpeechLLM.generate_with_stops` does, with the bench's caps: tokens per clip."""
    model = bench.model
    speech, lengths = model.encode_speech(batch.features, batch.feature_lengths)
    cached = model.cached_prefix(len(speech))
    embeds, mask, positions = model._layout(speech, lengths, cached=cached)
    limit, end = bench.caps(batch.durations), model.prompt.end_id
    if beams > 1:
        found = beam_search(model.llm, embeds, mask, positions, limit, end, beams, prefix=cached)
    else:
        found = greedy_hypotheses(model.llm, embeds, mask, positions, limit, end, prefix=cached)
    return [h.tokens for h in found]


def rtfx(audio: float, timing: dict[str, float]) -> dict[str, float]:
    return {"rtfx_best": round(audio / timing["best_s"], 2), "rtfx_median": round(audio / timing["median_s"], 2)}


def batched_vs_single(bench: Bench) -> dict[str, Any]:
    examples, reps = bench.examples, bench.reps
    audio, batch = sum(e.duration for e in examples), collate(examples)
    singles = [collate([e]) for e in examples]
    timed = compare({"batched": lambda: decode(bench, batch, 1), "one_by_one": lambda: [decode(bench, b, 1)[0] for b in singles]}, reps)
    (batched, together), (single, alone) = timed["batched"], timed["one_by_one"]
    return {
        "audio_s": round(audio, 2), "new_tokens": sum(len(t) for t in together),
        "clips_at_their_cap": sum(len(t) == cap for t, cap in zip(together, bench.caps([e.duration for e in examples]))),
        "batched": {**batched, **rtfx(audio, batched)}, "one_by_one": {**single, **rtfx(audio, single)},
        "speedup_best": round(single["best_s"] / batched["best_s"], 2),
        "speedup_median": round(single["median_s"] / batched["median_s"], 2),
        "same_tokens": together == alone,
    }


def beam_vs_greedy(bench: Bench) -> dict[str, Any]:
    audio, batch = sum(e.duration for e in bench.examples), collate(bench.examples)
    timed = compare({"greedy": lambda: decode(bench, batch, 1), "beam": lambda: decode(bench, batch, BEAMS)}, bench.reps)
    greedy, beam = timed["greedy"][0], timed["beam"][0]
    return {"beams": BEAMS, "greedy": {**greedy, **rtfx(audio, greedy)}, "beam": {**beam, **rtfx(audio, beam)},
            "beam_cost_best": round(beam["best_s"] / greedy["best_s"], 2)}


def prompt_embeddings(model: Any, batch: Any, cached: bool) -> tuple[Any, ...]:
    speech, lengths = model.encode_speech(batch.features, batch.feature_lengths)
    past = model.cached_prefix(len(speech)) if cached else None
    return (*model._layout(speech, lengths, cached=past), past)


def hf_generate(model: Any, embeds: torch.Tensor, mask: torch.Tensor, new_tokens: int, beams: int) -> list[list[int]]:
    """transformers' `generate` on the same embeddings, with the same end id and cap; each row's
    tokens up to its end token (padding after it dropped)."""
    from transformers import GenerationConfig

    end = model.prompt.end_id
    settings = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, num_beams=beams, eos_token_id=end, pad_token_id=end,
                                length_penalty=1.0, early_stopping=False, use_cache=True)
    rows = model.llm.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=settings).tolist()  # new tokens only
    return [row[: row.index(end)] if end in row else row for row in rows]


def vs_transformers(bench: Bench) -> dict[str, Any]:
    """Decoding alone, every clip under the same cap, both libraries on the same embeddings."""
    model, examples, reps = bench.model, bench.examples, bench.reps
    batch = collate(examples)
    new_tokens = bench.caps([statistics.mean(e.duration for e in examples)])[0]
    limit, end = [new_tokens] * len(examples), model.prompt.end_id
    embeds, mask, positions, _ = prompt_embeddings(model, batch, cached=False)
    cached = prompt_embeddings(model, batch, cached=True)
    results: dict[str, Any] = {"cap_per_clip": new_tokens, "clips": len(examples)}
    for beams in (1, BEAMS):
        def ours(embeds=embeds, mask=mask, positions=positions, past=None):
            if beams > 1:
                return [h.tokens for h in beam_search(model.llm, embeds, mask, positions, limit, end, beams, prefix=past)]
            return [h.tokens for h in greedy_hypotheses(model.llm, embeds, mask, positions, limit, end, prefix=past)]

        def ours_cached():
            c_embeds, c_mask, c_positions, _ = cached
            return ours(c_embeds, c_mask, c_positions, model.cached_prefix(len(examples)))

        timed = compare({"macasr": ours, "cached": ours_cached,
                         "transformers": lambda: hf_generate(model, embeds, mask, new_tokens, beams)}, reps)
        (mine, mine_tokens), (mine_cached, cached_tokens), (theirs, their_tokens) = timed.values()
        results["greedy" if beams == 1 else f"beam{beams}"] = {
            "macasr": mine, "macasr_prefix_cache": mine_cached, "transformers_generate": theirs,
            "transformers_over_macasr_best": round(theirs["best_s"] / mine["best_s"], 2),
            "transformers_over_macasr_median": round(theirs["median_s"] / mine["median_s"], 2),
            "transformers_over_macasr_cached_best": round(theirs["best_s"] / mine_cached["best_s"], 2),
            "same_tokens_as_transformers": mine_tokens == their_tokens,
            "clips_with_other_tokens_than_transformers": sum(a != b for a, b in zip(mine_tokens, their_tokens)),
            "same_tokens_with_prefix_cache": mine_tokens == cached_tokens,
            "new_tokens_macasr": sum(len(t) for t in mine_tokens), "new_tokens_transformers": sum(len(t) for t in their_tokens),
        }
    return results


def prefix_share(bench: Bench) -> dict[str, Any]:
    """The prefill with the prefix in every row against the cached prefix (its states copied into
    a fresh cache per batch, as decoding does), and a whole greedy decode with the cache off and on."""
    from macasr.model.decoding import cache_kwargs

    model, examples, reps = bench.model, bench.examples, bench.reps
    batch = collate(examples)
    full = prompt_embeddings(model, batch, cached=False)
    rows = prompt_embeddings(model, batch, cached=True)

    def prefill(prompt: tuple[Any, ...], cached: bool) -> None:
        embeds, mask, positions, _ = prompt
        past = model.cached_prefix(len(examples)) if cached else None
        model.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, logits_to_keep=1, **cache_kwargs(model.llm, past))

    def decode_with(cached: bool) -> list[list[int]]:
        model.use_prefix_cache = cached
        try:
            return decode(bench, batch, 1)
        finally:
            model.use_prefix_cache = True

    timed = compare({"prefill_off": lambda: prefill(full, False), "prefill_on": lambda: prefill(rows, True),
                     "decode_off": lambda: decode_with(False), "decode_on": lambda: decode_with(True)}, reps)
    off, on = timed["prefill_off"][0], timed["prefill_on"][0]
    (decode_off, tokens_off), (decode_on, tokens_on) = timed["decode_off"], timed["decode_on"]
    prefix = len(model.prompt.prefix)
    return {
        "row_tokens_longest": int(full[0].shape[1]), "prefix_tokens": prefix,
        "prefix_share_of_longest_row": round(prefix / full[0].shape[1], 3),
        "prefill_prefix_in_rows": off, "prefill_prefix_cached": on,
        "prefill_saving_best": round(1 - on["best_s"] / off["best_s"], 3),
        "prefill_saving_median": round(1 - on["median_s"] / off["median_s"], 3),
        "decode_cache_off": decode_off, "decode_cache_on": decode_on,
        "decode_saving_best": round(1 - decode_on["best_s"] / decode_off["best_s"], 3),
        "decode_saving_median": round(1 - decode_on["median_s"] / decode_off["median_s"], 3),
        "same_tokens": tokens_off == tokens_on,
    }


def measure(bench: Bench, skip_hf: bool) -> dict[str, Any]:
    results = {}
    for name, section in (("batched", batched_vs_single), ("beam", beam_vs_greedy), ("prefix", prefix_share),
                          ("vs_transformers", vs_transformers)):
        if name == "vs_transformers" and skip_hf:
            continue
        print(f"  {name} ...", file=sys.stderr, flush=True)
        results[name] = section(bench)
    return results


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


# ----------------------------------------------------------------------------- long-form
def longform(args: argparse.Namespace) -> dict[str, Any]:
    """The trained demo checkpoint transcribing one long espeak-ng file (`--longform-minutes`) as
    `macasr transcribe` does: VAD → speech segments of at most 30 s → batched decoding → stitched;
    RTFx and peak memory by benchmarks/longform.py, which also measures other models on its own."""
    if args.longform_minutes <= 0:
        return {"left_out": "--longform-minutes 0"}
    if not args.demo_checkpoint.is_file():
        return {"left_out": f"missing: {args.demo_checkpoint}"}
    from longform import longform as measure_longform, make_long_audio  # benchmarks/longform.py

    from macasr.infer.transcribe import Transcriber

    with tempfile.TemporaryDirectory() as tmp:
        audio = make_long_audio(Path(tmp) / "long.wav", args.longform_minutes)
        transcriber = Transcriber.from_checkpoint(args.demo_checkpoint, "cpu")
        return {"model": f"demo checkpoint {args.demo_checkpoint}", "minutes": args.longform_minutes,
                **measure_longform(transcriber, audio)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,real", help="comma-separated: demo, real, synthetic")
    parser.add_argument("--clips", type=int, default=8, help="noise clips for real and synthetic")
    parser.add_argument("--demo-clips", type=int, default=50, help="test clips for demo ([eval] batch_size of the demo recipe)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: no thread spins while another waits for a shared core)")
    parser.add_argument("--startup-runs", type=int, default=5)
    parser.add_argument("--real-encoder", type=Path, default=REAL_ENCODER)
    parser.add_argument("--real-llm", type=Path, default=REAL_LLM)
    parser.add_argument("--demo-checkpoint", type=Path, default=DEMO_CHECKPOINT)
    parser.add_argument("--demo-manifest", type=Path, default=DEMO_MANIFEST)
    parser.add_argument("--skip-hf", action="store_true", help="leave out the comparison with transformers' generate")
    parser.add_argument("--longform-minutes", type=float, default=10.0, help="long-form file for the demo checkpoint (0: leave out)")
    parser.add_argument("--out", type=Path, default=RESULTS / "inference.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"benchmark": "inference", "setup": {
        "reps": args.reps, "dtype": "fp32", "device": "cpu", "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "load_average_1min_at_start": round(os.getloadavg()[0], 2)}}
    print("cli start-up ...", file=sys.stderr, flush=True)
    report["cli_startup"] = cli_startup(args.startup_runs)
    report["models"] = {}
    for name in args.models.split(","):
        missing = {"demo": [p for p in (args.demo_checkpoint, args.demo_manifest) if not p.is_file()],
                   "real": [p for p in (args.real_encoder, args.real_llm) if not p.is_dir()], "synthetic": []}[name]
        if missing:
            report["models"][name] = {"left_out": f"missing: {', '.join(map(str, missing))}"}
            continue
        print(f"{name} ...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
            bench, described = demo_bench(args) if name == "demo" else random_bench(args, Path(tmp), synthetic=name == "synthetic")
            report["models"][name] = {"model": described, **measure(bench, args.skip_hf),
                                      "load_average_1min_after": round(os.getloadavg()[0], 2)}
    report["longform"] = longform(args)
    report["setup"]["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    write_result(args.out, report)


if __name__ == "__main__":
    main()
