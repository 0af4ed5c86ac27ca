"""Real / padded frames of training batches: lhotse bucketing vs random batching (goal >= 0.9).

    python benchmarks/padding_efficiency.py [--cuts N] [--max-batch-seconds S] [--num-buckets B]

Durations follow a LibriSpeech-960-shaped distribution (a synthetic stand-in: most cuts near the
corpus' ~16 s segmentation cap, a long tail of short ones, mean ~12.3 s like train-960's). A batch
pads every cut to its longest, so its efficiency is sum(durations) / (cuts x longest). Both
samplers fill batches to the same `max_batch_seconds`; random batching is the same fill rule over
a shuffled list (what a plain DataLoader does). Writes benchmarks/results/padding_efficiency.json.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler
from lhotse.testing.dummies import dummy_cut

from common import RESULTS, write_result  # benchmarks/common.py (scripts run from this folder)

GOAL = 0.9


def librispeech_like(n: int, seed: int = 0) -> np.ndarray:
    """Seconds: 17 - Gamma(1.3, 3.6), clipped to [0.8, 35]; mean ~12.3 s."""
    rng = np.random.default_rng(seed)
    return np.clip(17.0 - rng.gamma(1.3, 3.6, n), 0.8, 35.0)


def efficiency(batches: list[list[float]]) -> float:
    real = sum(sum(b) for b in batches)
    padded = sum(len(b) * max(b) for b in batches)
    return real / padded


def random_batches(durations: np.ndarray, max_seconds: float, seed: int = 0) -> list[list[float]]:
    order = np.random.default_rng(seed).permutation(len(durations))
    batches, current = [], []
    for d in durations[order]:
        if current and sum(current) + d > max_seconds:
            batches.append(current)
            current = []
        current.append(float(d))
    return batches + ([current] if current else [])


def bucketed_batches(durations: np.ndarray, max_seconds: float, num_buckets: int) -> list[list[float]]:
    cuts = CutSet.from_cuts(dummy_cut(i, duration=float(d)) for i, d in enumerate(durations))
    warnings.filterwarnings("ignore", "You are using DynamicBucketingSampler with an eagerly read CutSet")  # in memory on purpose
    sampler = DynamicBucketingSampler(cuts, max_duration=max_seconds, num_buckets=num_buckets, shuffle=True, seed=0)
    return [[c.duration for c in batch] for batch in sampler]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuts", type=int, default=20_000)
    parser.add_argument("--max-batch-seconds", type=float, default=200.0)
    parser.add_argument("--num-buckets", type=int, default=30)
    parser.add_argument("--out", type=Path, default=RESULTS / "padding_efficiency.json")
    args = parser.parse_args()
    durations = librispeech_like(args.cuts)
    bucketed = bucketed_batches(durations, args.max_batch_seconds, args.num_buckets)
    shuffled = random_batches(durations, args.max_batch_seconds)
    report = {
        "benchmark": "padding_efficiency", "cuts": args.cuts, "mean_duration_s": round(float(durations.mean()), 2),
        "max_batch_seconds": args.max_batch_seconds, "num_buckets": args.num_buckets, "goal": GOAL,
        "lhotse_dynamic_bucketing": round(efficiency(bucketed), 4), "random_batching": round(efficiency(shuffled), 4),
        "batches": {"lhotse_dynamic_bucketing": len(bucketed), "random_batching": len(shuffled)},
    }
    report["met"] = report["lhotse_dynamic_bucketing"] >= GOAL
    write_result(args.out, report)


if __name__ == "__main__":
    main()
