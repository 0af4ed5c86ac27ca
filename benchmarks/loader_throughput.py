"""Clips and audio seconds per second one DataLoader worker reads, resamples and featurizes.

    python benchmarks/loader_throughput.py [--clips N] [--seconds S]

Goal: one worker feeds >= 1,000 audio-seconds per second for 16 kHz FLAC on this CPU. The work
is exactly a worker's: `CutDataset` turns batches of cuts into padded `Batch`es (read, mix to
mono, resample with soxr when needed, Whisper log-mel with 80 bins, tokenization left out). It
runs in this process on one thread (torch.set_num_threads(1)), which is what a worker gets.
Inputs: a macasr JSONL of 16 kHz WAV, a lhotse CutSet of 16 kHz FLAC, the same as Shar shards,
and a CutSet of 44.1 kHz FLAC (resampled). Writes benchmarks/results/loader_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from lhotse import CutSet
from transformers import WhisperFeatureExtractor

from macasr.data.loader import CutDataset
from macasr.data.manifest import open_cuts
from macasr.model.encoders import WhisperFeaturizer

GOAL = 1_000.0  # audio-seconds per second per worker, 16 kHz FLAC
BATCH = 16


def write_clips(folder: Path, clips: int, seconds: float, rate: int, fmt: str) -> Path:
    """`clips` files of speech-like noise and a macasr JSONL manifest naming them."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(clips):
        samples = (0.1 * rng.standard_normal(round(seconds * rate))).astype("float32")
        path = folder / f"clip{i:04d}.{fmt}"
        sf.write(path, samples, rate, subtype="PCM_16")
        rows.append(json.dumps({"audio": path.name, "text": "the quick brown fox", "duration": seconds}))
    manifest = folder / "clips.jsonl"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def throughput(cuts: list, dataset: CutDataset, repeats: int = 2) -> dict:
    batches = [CutSet.from_cuts(cuts[i : i + BATCH]) for i in range(0, len(cuts), BATCH)]
    dataset[batches[0]]  # warm up (file cache, first-call overheads)
    t0 = time.perf_counter()
    seconds = 0.0
    for _ in range(repeats):
        for batch in batches:
            out = dataset[batch]
            assert not out.bad_clips, out.skipped
            seconds += sum(out.durations)
    wall = time.perf_counter() - t0
    clips = repeats * len(cuts)
    return {"clips_per_s": round(clips / wall, 1), "audio_s_per_s": round(seconds / wall, 1),
            "audio_h_per_s": round(seconds / wall / 3600, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=12.3, help="clip length (LibriSpeech train mean)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "loader_throughput.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    fe = WhisperFeatureExtractor(feature_size=80)
    dataset = CutDataset(WhisperFeaturizer(fe.mel_filters, fe.n_fft, fe.hop_length, fe.sampling_rate))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, rate, fmt in (("jsonl_wav_16k", 16_000, "wav"), ("cutset_flac_16k", 16_000, "flac"),
                                ("cutset_flac_44k", 44_100, "flac")):
            folder = root / name
            folder.mkdir()
            manifest = write_clips(folder, args.clips, args.seconds, rate, fmt)
            if name.startswith("cutset"):
                open_cuts(manifest).to_file(folder / "cuts.jsonl.gz")
                manifest = folder / "cuts.jsonl.gz"
            results[name] = throughput(list(open_cuts(manifest)), dataset)
            if name == "cutset_flac_16k":
                shar = root / "shar"
                shar.mkdir()
                CutSet.from_file(manifest).to_shar(shar, fields={"recording": "flac"}, shard_size=50)
                results["shar_flac_16k"] = throughput(list(open_cuts(shar)), dataset)
    report = {"benchmark": "loader_throughput", "clips": args.clips, "clip_seconds": args.seconds,
              "batch_cuts": BATCH, "mel_bins": 80, "goal_audio_s_per_s": GOAL,
              "met": results["cutset_flac_16k"]["audio_s_per_s"] >= GOAL,
              "machine": f"{platform.machine()}, {platform.python_version()}", "date": time.strftime("%Y-%m-%d"),
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
