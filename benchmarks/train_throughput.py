"""Benchmark `train_throughput`: training audio seconds per second, and where a step's time goes.

    python benchmarks/train_throughput.py [--threads 1] [--out benchmarks/results/train_throughput.json]

Two models, on CPU in fp32, each trained for a few optimizer steps through the engine itself
(`Trainer._optimizer_step` over `Trainer._batches()`, so sampler, dataset, collate, autocast,
gradient norm and AdamW are the ones training uses):

- demo: the `demo` preset with the demo's models (tiny Whisper, d_model 64, 2 layers + tiny
  Qwen3, hidden 64, 2 layers; everything trains; `macasr.demo.build_models`) on espeak-ng
  speech (`macasr.data.synth`, 1-3.5 s clips), 32 clips a batch, SpecAugment on.
- base: a Whisper-base-sized encoder (d_model 512, 6 layers, 8 heads, FFN 2048; frozen) → MLP
  connector (trains) → a SmolLM2-135M-shaped Llama (hidden 576, 30 layers, 9 heads, 3 KV
  heads, FFN 1536, vocabulary 49,152, tied embeddings; frozen), random weights, nothing
  downloaded; noise clips of 2-12 s (uniform) with word-salad transcripts, 8 clips a batch.

Each step is split with timers (and a device synchronisation at every boundary, so the split is
also right on CUDA): data (drawing the next micro-batch: sampling, reading audio, log-mel, collate;
`[data] num_workers = 0`, so none of it is hidden in worker processes), encoder forward (hooks on
the encoder module), connector + LLM forward (the rest of the model's forward, loss included),
backward, optimizer (AdamW step) and other (gradient norm, finiteness check, scheduler). Audio
seconds per second is the audio of the measured steps over their wall time. The first steps are
warm-up and not measured. Times are wall-clock on a machine shared with other processes: treat
shares as a guide, not to the percent.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402

from macasr import config as config_module, testing  # noqa: E402
from macasr.config import Config  # noqa: E402
from macasr.model.build import build_model  # noqa: E402
from macasr.train.engine import Trainer  # noqa: E402
from macasr.train.run import training_sets  # noqa: E402

from common import RESULTS, write_result  # benchmarks/common.py (scripts run from this folder)
from feature_cache import WHISPER_BASE, WORDS, write_corpus  # noqa: E402  (noise clips of 2-12 s)

SMOLLM2_135M = {"hidden": 576, "layers": 30, "heads": 9, "kv_heads": 3, "ffn": 1536, "vocab": 49_152}
# A few hundred clips spread over the default 30 duration buckets would leave each bucket a few
# clips, and batches far smaller than training on a full corpus draws: 2 buckets keep them full.
BUCKETS = 2
PARTS = ("data", "encoder_forward", "connector_llm_forward", "backward", "optimizer", "other")


def save_smollm2_shaped(path: Path, tokenizer: Any, seed: int = 0) -> Path:
    """A Llama with HuggingFaceTB/SmolLM2-135M's shape and random weights, saved with `tokenizer`
    (whose few hundred ids fit the 49,152-row embedding, as a real vocabulary would be sized)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    s = SMOLLM2_135M
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["ffn"], num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"], max_position_embeddings=8192,
        rope_theta=100_000.0, tie_word_embeddings=True, bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def demo_setup(root: Path) -> Config:
    """The demo preset, its models and espeak-ng training clips, in `root`."""
    from macasr.data import synth
    from macasr.demo import build_models

    manifests = synth.build_corpus(root / "data", n_train=256, n_valid=1, n_test=1, n_unseen=1, seed=0)
    whisper, qwen = build_models(root / "models", manifests["train"], seed=0)
    return config_module.replace(config_module.load_preset("demo"), **{
        "model.encoder.path": str(whisper), "model.llm.path": str(qwen), "data.train": [str(manifests["train"])],
        "data.valid": [], "data.num_workers": 0, "data.num_buckets": BUCKETS, "train.output_dir": str(root / "runs"),
        "train.device": "cpu",
    })


def base_setup(root: Path) -> Config:
    """Whisper-base-sized encoder + SmolLM2-135M-shaped LLM (both frozen), noise clips, in `root`."""
    (root / "corpus").mkdir(parents=True)
    manifest = write_corpus(root / "corpus", clips=48)
    tokenizer = testing.train_tokenizer([" ".join(WORDS)] * 20, vocab_size=200)
    whisper = testing.save_tiny_whisper(root / "whisper-base-sized", **WHISPER_BASE)
    llm = save_smollm2_shaped(root / "smollm2-135m-shaped", tokenizer)
    return config_module.replace(Config(), **{
        "model.encoder.path": str(whisper), "model.llm.path": str(llm), "data.train": [str(manifest)],
        "data.batch_size": 8, "data.num_workers": 0, "data.num_buckets": BUCKETS, "train.output_dir": str(root / "runs"), "train.device": "cpu",
    })


class StepClock:
    """Seconds per part of an optimizer step, summed over the measured steps."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self.on = False

    def sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def timed(self, part: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            start = self.sync()
            try:
                return call(*args, **kwargs)
            finally:
                if self.on:
                    self.seconds[part] += self.sync() - start
        return run

    def batches(self, source: Iterator[Any]) -> Iterator[Any]:
        """`source`, each draw timed as data."""
        draw = self.timed("data", lambda: next(source))
        while True:
            yield draw()


def instrument(trainer: Trainer, clock: StepClock) -> Callable[[], None]:
    """Time the model's forward, its encoder, backward and the optimizer step → undo."""
    model, encoder = trainer.model, trainer.model.encoder
    starts: list[float] = []
    pre = encoder.register_forward_pre_hook(lambda *_: starts.append(clock.sync()))

    def encoder_done(*_: Any) -> None:
        if clock.on:
            clock.seconds["encoder_forward"] += clock.sync() - starts.pop()

    post = encoder.register_forward_hook(encoder_done)
    model.forward = clock.timed("connector_llm_forward", model.forward)  # the encoder's share is taken out below
    trainer.optimizer.step = clock.timed("optimizer", trainer.optimizer.step)  # the scheduler's counting wrapper inside
    backward = torch.Tensor.backward
    torch.Tensor.backward = clock.timed("backward", backward)

    def undo() -> None:
        pre.remove()
        post.remove()
        del model.forward
        torch.Tensor.backward = backward

    return undo


def measure(name: str, cfg: Config, warmup: int, steps: int) -> dict[str, Any]:
    """Train `warmup` + `steps` optimizer steps; throughput and time shares of the measured ones."""
    torch.manual_seed(0)
    device = torch.device("cpu")
    cfg = config_module.replace(cfg, **{"train.name": name, "train.max_steps": warmup + steps, "train.grad_accum": 1})
    train_set, valid_set = training_sets(cfg)
    model = build_model(cfg, device, "fp32")
    trainer = Trainer(cfg, model, train_set, valid_set, device, "fp32", Console(file=io.StringIO()))
    clock = StepClock(device)
    undo = instrument(trainer, clock)
    batches = clock.batches(trainer._batches())
    model.train()
    audio, wall, refused = 0.0, 0.0, 0
    try:
        for i in range(warmup + steps):
            clock.on = i >= warmup
            start = clock.sync()
            loss, audio_s = trainer._optimizer_step(batches)
            if clock.on:
                wall += clock.sync() - start
                audio += audio_s
                refused += loss is None
    finally:
        undo()
    parts = dict(clock.seconds)
    parts["connector_llm_forward"] -= parts["encoder_forward"]
    parts["other"] = max(wall - sum(parts.values()), 0.0)
    counts = {"total": sum(p.numel() for p in model.parameters()),
              "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    return {
        "audio_seconds_per_second": round(audio / wall, 2),
        "step_seconds": round(wall / steps, 3), "audio_seconds_per_step": round(audio / steps, 1),
        "share": {k: round(v / wall, 3) for k, v in parts.items()},
        "seconds": {k: round(v, 2) for k, v in parts.items()},
        "steps_measured": steps, "warmup_steps": warmup, "refused_steps": refused, "parameters": counts,
        "trains": {"encoder": cfg.model.encoder.train, "connector": True, "llm": cfg.model.llm.train},
        "batch": {"clips": cfg.data.batch_size, "num_buckets": cfg.data.num_buckets, "spec_augment": cfg.data.spec_augment},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: no thread spins while another waits for a shared core)")
    parser.add_argument("--demo-steps", type=int, default=20)
    parser.add_argument("--base-steps", type=int, default=6)
    parser.add_argument("--note", default="", help="a line about the machine's load while it ran")
    parser.add_argument("--out", type=Path, default=RESULTS / "train_throughput.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        results = {
            "demo": measure("demo", demo_setup(root / "demo"), warmup=3, steps=args.demo_steps),
            "base": measure("base", base_setup(root / "base"), warmup=2, steps=args.base_steps),
        }
    report = {
        "benchmark": "train_throughput",
        "setup": {
            "demo": {"encoder": "whisper d_model 64, 2 layers, 4 heads", "connector": "mlp, downsample 4, hidden 256",
                     "llm": "qwen3 hidden 64, 2 layers, 4 heads, 2 kv heads", "data": "espeak-ng speech, 1-3.5 s clips",
                     "preset": "demo"},
            "base": {"encoder": {"sized_as": "openai/whisper-base", **WHISPER_BASE, "ffn": 4 * WHISPER_BASE["d_model"], "weights": "random"},
                     "connector": "mlp (default)", "llm": {"shaped_as": "HuggingFaceTB/SmolLM2-135M", "family": "llama", **SMOLLM2_135M,
                                                           "weights": "random"},
                     "data": "noise, 2-12 s clips (uniform), word-salad transcripts"},
            "dtype": "fp32", "device": "cpu", "num_workers": 0, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
        },
        "models": results,
        "runtime_s": round(time.perf_counter() - started, 1),
        "note": args.note or "wall-clock on a shared machine: other processes ran at the same time",
    }
    write_result(args.out, report)


if __name__ == "__main__":
    main()
