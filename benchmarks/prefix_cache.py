"""Benchmark `prefix_cache`: a training step's forward + backward with and without the prompt prefix's KV cache.

    python benchmarks/prefix_cache.py [--reps 7] [--threads 1] [--real-encoder DIR] [--real-llm DIR] [--out benchmarks/results/prefix_cache.json]

While the LLM is frozen (no LoRA), `[train] prefix_cache` computes the prompt prefix's keys and
values once and the LLM runs only on [speech | suffix | target]. This times what a training step
does with the model, `loss = model(batch); loss.backward()` (encoder, connector, LLM; no optimizer
step), on one batch of 8 noise clips of 2 s and of 12 s (targets of 2.5 words a second), with the
cache off and on in alternation; the saving compares the best repetitions (the least disturbed on
a shared machine), with the medians and the process's CPU time (one thread: what other processes
on the machine disturb least) beside it. The loss of both is reported too (they must agree).

Models, on CPU in fp32 with frozen encoder and LLM and the default MLP connector:
- "synthetic": a Whisper-base-sized encoder (random weights) and a small Qwen3 (hidden 256, 4 layers).
- "real": openai/whisper-base and SmolLM2-135M-Instruct from local folders (`--real-encoder`,
  `--real-llm`; /work/realmodels/... by default; left out when absent), with the plain prompt
  and with the chat template (its system turn makes a longer prefix).
Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from macasr import config as config_module, testing  # noqa: E402
from macasr.config import Config  # noqa: E402
from macasr.data.collate import Example, collate  # noqa: E402
from macasr.model.build import build_model  # noqa: E402
from macasr.model.llm import TargetTokenizer  # noqa: E402

from common import RESULTS, write_result  # benchmarks/common.py (scripts run from this folder)

WHISPER_BASE = {"d_model": 512, "layers": 6, "heads": 8, "num_mel_bins": 80}  # openai/whisper-base's encoder
LLM = {"hidden": 256, "layers": 4, "heads": 4, "kv_heads": 2}
BATCH = 8
SECONDS = (2.0, 12.0)
WORDS = "the cat sat on a mat while seven green apples fell from the old tree near the river bank".split()
REAL_ENCODER = Path("/work/realmodels/whisper-base")
REAL_LLM = Path("/work/realmodels/smollm2-135m-instruct")


def synthetic_config(folder: Path) -> Config:
    tokenizer = testing.train_tokenizer([" ".join(WORDS)] * 20, vocab_size=200)
    whisper = testing.save_tiny_whisper(folder / "whisper-base-sized", **WHISPER_BASE)
    llm = testing.save_tiny_qwen3(folder / "llm", tokenizer, **LLM)
    return config_module.replace(Config(), **{"model.encoder.path": str(whisper), "model.llm.path": str(llm), "train.device": "cpu"})


def make_batch(model, seconds: float, seed: int = 0):
    """BATCH noise clips of `seconds` (±10 %, so rows pad differently) with word-salad targets."""
    rng = np.random.default_rng(seed)
    target = TargetTokenizer(model.tokenizer, model.prompt.end_id)
    examples = []
    for i in range(BATCH):
        duration = seconds * rng.uniform(0.9, 1.1)
        wave = (rng.standard_normal(int(duration * 16_000)) * 0.1).astype(np.float32)
        text = " ".join(rng.choice(WORDS, size=max(1, int(duration * 2.5))))
        examples.append(Example(i, f"c{i}", text, duration, model.encoder.featurizer(wave), target(text)))
    return collate(examples)


def step(model, batch, cached: bool) -> tuple[float, float, float]:
    """(wall seconds, this process's CPU seconds, loss) of one forward + backward."""
    model.use_prefix_cache = cached
    model.zero_grad(set_to_none=True)
    start, cpu = time.perf_counter(), time.process_time()
    loss = model(batch)
    loss.backward()
    return time.perf_counter() - start, time.process_time() - cpu, float(loss.detach())


def measure(cfg: Config, reps: int) -> dict:
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert model.cached_prefix(1) is not None, "the prefix cache does not apply to this model"
    results = {"prefix_tokens": len(model.prompt.prefix), "suffix_tokens": len(model.prompt.suffix)}
    for seconds in SECONDS:
        batch = make_batch(model, seconds)
        with torch.no_grad():
            speech = int(model.encode_speech(batch.features, batch.feature_lengths)[1].max())
        step(model, batch, False), step(model, batch, True)  # warm-up (allocator, the prefix's states)
        wall, cpu = {False: [], True: []}, {False: [], True: []}
        losses = {}
        for _ in range(reps):  # interleaved, so a burst of load from other processes hits both alike
            for cached in (False, True):
                elapsed, used, losses[cached] = step(model, batch, cached)
                wall[cached].append(elapsed)
                cpu[cached].append(used)
        prompt = len(model.prompt.prefix) + len(model.prompt.suffix)
        results[f"{seconds:g}s"] = {
            "row_tokens": {"prefix": len(model.prompt.prefix), "speech_max": speech, "suffix": len(model.prompt.suffix),
                           "target_max": int(batch.target_lengths.max()), "longest_row": prompt + speech + int(batch.target_lengths.max())},
            "off_s": [round(t, 4) for t in wall[False]], "on_s": [round(t, 4) for t in wall[True]],
            "off_cpu_s": [round(t, 4) for t in cpu[False]], "on_cpu_s": [round(t, 4) for t in cpu[True]],
            "saving": round(1 - min(wall[True]) / min(wall[False]), 3),
            "saving_median": round(1 - statistics.median(wall[True]) / statistics.median(wall[False]), 3),
            "saving_cpu": round(1 - min(cpu[True]) / min(cpu[False]), 3),
            "loss_off": round(losses[False], 6), "loss_on": round(losses[True], 6),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: no thread spins while another waits for a shared core)")
    parser.add_argument("--real-encoder", type=Path, default=REAL_ENCODER)
    parser.add_argument("--real-llm", type=Path, default=REAL_LLM)
    parser.add_argument("--out", type=Path, default=RESULTS / "prefix_cache.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        models["synthetic"] = measure(synthetic_config(Path(tmp)), args.reps)
    if args.real_encoder.is_dir() and args.real_llm.is_dir():
        real = config_module.replace(Config(), **{"model.encoder.path": str(args.real_encoder), "model.llm.path": str(args.real_llm),
                                                  "train.device": "cpu"})
        models["real_plain"] = measure(real, args.reps)
        models["real_chat"] = measure(config_module.replace(real, **{"prompt.style": "chat"}), args.reps)
    report = {
        "benchmark": "prefix_cache",
        "setup": {"synthetic": {"encoder": {"sized_as": "openai/whisper-base", **WHISPER_BASE, "weights": "random"},
                                "llm": {"family": "qwen3", **LLM}},
                  "real": {"encoder": str(args.real_encoder), "llm": str(args.real_llm)} if "real_plain" in models else None,
                  "batch_clips": BATCH, "clip_seconds": list(SECONDS), "reps": args.reps, "dtype": "fp32", "device": "cpu",
                  "frozen": "encoder and LLM", "connector": "mlp (default)", "torch_threads": torch.get_num_threads(),
                  "torch": torch.__version__, "python": platform.python_version()},
        "models": models,
    }
    write_result(args.out, report)


if __name__ == "__main__":
    main()
