"""Benchmark `feature_cache`: training epoch time from cached encoder frames vs live encoding.

    python benchmarks/feature_cache.py [--clips 16] [--epochs 3] [--threads 1] [--out benchmarks/results/feature_cache.json]

A Whisper-base-sized encoder (d_model 512, 6 layers, 8 heads, FFN 2048, 80 mel bins; random
weights, built from a WhisperConfig, nothing downloaded) feeds a small Qwen3 LLM (hidden 256,
4 layers) through the MLP connector, on CPU in fp32. Clips are noise WAVs of 2-12 s (uniform,
mean 7 s), batched 8 at a time in duration order. One epoch is what a training epoch does per
batch, in one process, through the training dataset (`CutDataset`): live = read audio + log-mel
+ encoder forward + connector/LLM forward and backward + AdamW step; cached = read frames
(`frames_from` = `FrameCache`) + the same connector/LLM step.
Live and cached epochs alternate and each is timed, in wall-clock and in this process's CPU
seconds; the speedup is best epoch over best epoch (the least disturbed by other processes on a
shared machine), with the median and CPU-time ratios beside it, for window = "own" and "full"
(full pads every clip to Whisper's 30 s window: costly live, free once cached). One torch
thread by default: on a shared machine a second thread spins while the first waits for a core,
which inflates CPU time and blurs the comparison.
The speedup depends on how large the LLM is next to the encoder: a 1.7 B LLM on a GPU is a
larger share of the step than this CPU-sized one (see docs/performance.md).
Goal: cached ≥ 2× faster than live (window = "own").
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
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from macasr import config as config_module, testing  # noqa: E402
from macasr.config import Config  # noqa: E402
from macasr.data.cache import CutEncoder, FrameCache, build_cache, cache_key  # noqa: E402
from macasr.data.loader import CutDataset  # noqa: E402
from macasr.model.build import build_model  # noqa: E402
from macasr.model.llm import TargetTokenizer  # noqa: E402

from common import RESULTS, write_result  # benchmarks/common.py (scripts run from this folder)

WHISPER_BASE = {"d_model": 512, "layers": 6, "heads": 8, "num_mel_bins": 80}  # openai/whisper-base's encoder
LLM = {"hidden": 256, "layers": 4, "heads": 4, "kv_heads": 2}
BATCH = 8
WORDS = "the cat sat on a mat while seven green apples fell from the old tree near the river bank".split()


def write_corpus(folder: Path, clips: int, seed: int = 0) -> Path:
    """`clips` noise WAVs of 2-12 s with word-salad transcripts, as a lhotse CutSet manifest."""
    from lhotse import CutSet, Recording, SupervisionSegment

    rng = np.random.default_rng(seed)
    cuts = []
    for i in range(clips):
        wav = folder / f"clip{i:04d}.wav"
        sf.write(wav, (rng.standard_normal(int(rng.uniform(2, 12) * 16_000)) * 0.1).astype(np.float32), 16_000)
        cut = Recording.from_file(wav).to_cut()
        text = " ".join(rng.choice(WORDS, size=int(cut.duration * 2.5)))
        cut.supervisions = [SupervisionSegment(f"s{i}", cut.recording_id, 0.0, cut.duration, text=text)]
        cuts.append(cut)
    path = folder / "cuts.jsonl.gz"
    CutSet.from_cuts(cuts).to_file(path)
    return path


def make_config(folder: Path) -> Config:
    tokenizer = testing.train_tokenizer([" ".join(WORDS)] * 20, vocab_size=200)
    whisper = testing.save_tiny_whisper(folder / "whisper-base-sized", **WHISPER_BASE)
    llm = testing.save_tiny_qwen3(folder / "llm", tokenizer, **LLM)
    return config_module.replace(Config(), **{"model.encoder.path": str(whisper), "model.llm.path": str(llm),
                                               "train.device": "cpu", "data.num_workers": 0})


def batches(cuts: list, size: int) -> list:
    """CutSets of `size` cuts in duration order (what a bucketing sampler hands the dataset)."""
    from lhotse import CutSet

    ordered = sorted(cuts, key=lambda c: c.duration)
    return [CutSet.from_cuts(ordered[i : i + size]) for i in range(0, len(ordered), size)]


def epoch(model, optimizer, plan: list, dataset: CutDataset) -> tuple[float, float]:
    """(wall, CPU) seconds for one pass over `plan`'s batches through the training dataset (live:
    read + log-mel; cached: frames_from), then forward, backward and an AdamW step."""
    model.train()
    start, cpu = time.perf_counter(), time.process_time()
    for cuts in plan:
        loss = model(dataset[cuts])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start, time.process_time() - cpu


def run_window(cfg: Config, window: str, manifest: Path, root: Path, epochs: int) -> dict:
    from lhotse import CutSet

    cfg = config_module.replace(cfg, **{"model.encoder.window": window})
    torch.manual_seed(0)
    model = build_model(cfg)
    tokenize = TargetTokenizer(model.tokenizer, model.prompt.end_id)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    cuts = list(CutSet.from_jsonl_lazy(manifest))
    plan = batches(cuts, BATCH)
    key = cache_key(cfg, model.encoder)
    start = time.perf_counter()
    build_cache(root / window, key, {"bench": [str(manifest)]}, CutSet.from_jsonl_lazy, CutEncoder(model.encoder, batch_size=BATCH))
    build_s = time.perf_counter() - start
    live_data = CutDataset(model.encoder.featurizer, tokenize)
    cached_data = CutDataset(model.encoder.featurizer, tokenize, frames_from=FrameCache(root / window, key))
    live, cached = [], []
    for _ in range(epochs):  # interleaved, so a burst of load from other processes hits both alike
        live.append(epoch(model, optimizer, plan, live_data))
        cached.append(epoch(model, optimizer, plan, cached_data))
    wall = {"live": [w for w, _ in live], "cached": [w for w, _ in cached]}
    cpu = {"live": [c for _, c in live], "cached": [c for _, c in cached]}
    return {
        "cache_build_s": round(build_s, 2),
        "live_epoch_s": [round(t, 2) for t in wall["live"]], "cached_epoch_s": [round(t, 2) for t in wall["cached"]],
        "live_epoch_cpu_s": [round(t, 2) for t in cpu["live"]], "cached_epoch_cpu_s": [round(t, 2) for t in cpu["cached"]],
        "speedup": round(min(wall["live"]) / min(wall["cached"]), 2),
        "speedup_median": round(statistics.median(wall["live"]) / statistics.median(wall["cached"]), 2),
        "speedup_cpu": round(min(cpu["live"]) / min(cpu["cached"]), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: no thread spins while another waits for a shared core)")
    parser.add_argument("--out", type=Path, default=RESULTS / "feature_cache.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from lhotse import CutSet

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "corpus").mkdir()
        manifest = write_corpus(root / "corpus", args.clips)
        cfg = make_config(root)
        hours = sum(c.duration for c in CutSet.from_jsonl_lazy(manifest)) / 3600
        results = {w: run_window(cfg, w, manifest, root / "cache", args.epochs) for w in ("own", "full")}
    report = {
        "benchmark": "feature_cache", "goal": "cached epoch >= 2x faster than live (window = own)",
        "met": results["own"]["speedup"] >= 2.0,
        "setup": {"encoder": {"sized_as": "openai/whisper-base", **WHISPER_BASE, "ffn": 4 * WHISPER_BASE["d_model"], "weights": "random"},
                  "llm": {"family": "qwen3", **LLM, "frozen": True}, "connector": "mlp (default)", "clips": args.clips,
                  "audio_hours": round(hours, 4), "batch_clips": BATCH, "epochs_each": args.epochs, "dtype": "fp32",
                  "device": "cpu", "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                  "torch": torch.__version__, "python": platform.python_version()},
        "windows": results,
    }
    write_result(args.out, report)


if __name__ == "__main__":
    main()
