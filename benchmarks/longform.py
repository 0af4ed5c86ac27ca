"""Benchmark long-form transcription: a 10-minute file through `Transcriber.transcribe` (VAD plan,
segments of at most [eval] max_segment_seconds decoded in batches, stitched).

    python benchmarks/longform.py [--minutes 10] [--threads 1] [--batch-size 16] [--skip-real] [--real-encoder DIR] [--real-llm DIR]
                                 [--out benchmarks/results/longform.json]

The audio is espeak-ng speech (sentences from macasr's demo grammar, 4 voices) with pauses of
0.2-1.5 s, and a 4 s stretch of silence every minute, written as 16 kHz 16-bit WAV. Reported:
RTFx (audio seconds per wall second) of the whole transcription and of the VAD plan alone, the
segments' count and lengths, and peak memory: the process's resident set sampled every 20 ms while
planning and while transcribing, above what it held before (model loaded, file on disk), and
torch's CUDA peak when on a GPU. The models are untrained, so they run to the token cap or the
repeat guard: RTFx is a floor for decoding, not what a trained model gets. Models as in benchmarks/prefix_cache.py: "synthetic" (a Whisper-base-sized encoder with
random weights, a small Qwen3) and, when the folders exist, "real" (openai/whisper-base and
SmolLM2-135M-Instruct). Nothing is downloaded.

`longform(transcriber, path)` is the measurement, callable from another benchmark.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from macasr import config as config_module  # noqa: E402
from macasr.audio import SAMPLE_RATE  # noqa: E402
from macasr.config import Config  # noqa: E402
from macasr.infer.transcribe import Transcriber  # noqa: E402
from macasr.model.build import build_model  # noqa: E402

from common import RESULTS, write_result  # benchmarks/common.py (scripts run from this folder)
from prefix_cache import REAL_ENCODER, REAL_LLM, synthetic_config  # the same two models

VOICES = ("en-us", "en-us+f3", "en-us+m3", "en-us+f2")


def make_long_audio(path: Path, minutes: float = 10.0, seed: int = 0) -> Path:
    """`minutes` of espeak-ng sentences with random pauses (and 4 s of silence each minute) → a 16 kHz WAV."""
    from macasr.data import synth

    rng = random.Random(seed)
    sentences = synth.make_sentences(rng, 400)
    total, parts, minute = int(minutes * 60 * SAMPLE_RATE), [], 1
    length = 0
    while length < total:
        speech = synth.synthesize(sentences[len(parts) % len(sentences)], VOICES[len(parts) % len(VOICES)])
        pause = np.zeros(int(rng.uniform(0.2, 1.5) * SAMPLE_RATE), dtype=np.float32)
        if length >= minute * 60 * SAMPLE_RATE:
            pause, minute = np.zeros(4 * SAMPLE_RATE, dtype=np.float32), minute + 1
        parts += [speech, pause]
        length += len(speech) + len(pause)
    sf.write(path, np.concatenate(parts)[:total], SAMPLE_RATE, subtype="PCM_16")
    return path


class PeakRSS:
    """The process's peak resident set (bytes) while in the block, sampled from /proc every 20 ms;
    `above` is that peak minus the resident set at entry."""

    def __init__(self, every: float = 0.02) -> None:
        self.every, self.peak, self.start, self._stop = every, 0, 0, threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self.rss()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def above(self) -> int:
        return self.peak - self.start


def longform(transcriber: Transcriber, path: Path) -> dict:
    """Transcribe the file at `path` once → RTFx, wall seconds, VAD plan RTFx, segments, peak memory (MB)."""
    from macasr.infer.inputs import file_cut
    from macasr.infer.segment import load_vad, plan

    cut = file_cut(str(path), 0)
    vad = load_vad()
    with PeakRSS() as plan_memory:  # the VAD pass alone: read in pieces, so flat in the file's length
        start = time.perf_counter()
        spans = plan(cut, transcriber.cfg.eval.max_segment_seconds, vad)
        plan_seconds = time.perf_counter() - start
    if transcriber.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(transcriber.device)
    with PeakRSS() as memory:
        start = time.perf_counter()
        (result,) = transcriber.transcribe([path])
        wall = time.perf_counter() - start
    assert result.error is None, result.error
    lengths = [s.end - s.start for s in result.segments]
    return {
        "audio_seconds": round(cut.duration, 2), "wall_seconds": round(wall, 2), "rtfx": round(cut.duration / wall, 2),
        "vad_plan_seconds": round(plan_seconds, 2), "vad_plan_rtfx": round(cut.duration / plan_seconds, 1),
        "vad_plan_peak_rss_above_start_mb": round(plan_memory.above / 2**20, 1),
        "segments": len(spans), "segment_seconds": {"min": round(min(lengths), 2), "mean": round(float(np.mean(lengths)), 2),
                                                    "max": round(max(lengths), 2)},
        "speech_seconds_decoded": round(sum(lengths), 1), "transcript_words": len(result.text.split()),
        "peak_rss_mb": round(memory.peak / 2**20, 1), "peak_rss_above_start_mb": round(memory.above / 2**20, 1),
        "cuda_peak_mb": round(torch.cuda.max_memory_allocated(transcriber.device) / 2**20, 1) if transcriber.device.type == "cuda" else None,
    }


def measure(cfg: Config, path: Path) -> dict:
    torch.manual_seed(0)
    device = torch.device(cfg.train.device if cfg.train.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_model(cfg).eval().to(device)
    return longform(Transcriber(model, cfg, device, "fp32"), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--real-encoder", type=Path, default=REAL_ENCODER)
    parser.add_argument("--real-llm", type=Path, default=REAL_LLM)
    parser.add_argument("--skip-real", action="store_true", help="only the synthetic model (the real one's loops to the token cap are slow on a CPU)")
    parser.add_argument("--out", type=Path, default=RESULTS / "longform.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = {"eval.batch_size": args.batch_size, "train.device": "cpu"}
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        audio = make_long_audio(Path(tmp) / "long.wav", args.minutes)
        models["synthetic"] = measure(config_module.replace(synthetic_config(Path(tmp)), **settings), audio)
        if not args.skip_real and args.real_encoder.is_dir() and args.real_llm.is_dir():
            real = config_module.replace(Config(), **{"model.encoder.path": str(args.real_encoder), "model.llm.path": str(args.real_llm), **settings})
            models["real"] = measure(real, audio)
    report = {
        "benchmark": "longform",
        "setup": {"minutes": args.minutes, "audio": "espeak-ng sentences, pauses 0.2-1.5 s, 4 s of silence a minute, 16 kHz PCM_16 WAV",
                  "max_segment_seconds": Config().eval.max_segment_seconds, "batch_size": args.batch_size, "dtype": "fp32",
                  "device": "cpu", "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                  "real": {"encoder": str(args.real_encoder), "llm": str(args.real_llm)} if "real" in models else None},
        "models": models,
    }
    write_result(args.out, report)


if __name__ == "__main__":
    main()
