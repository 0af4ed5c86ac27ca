"""The TOML schema: frozen dataclasses, validated once at load, written back with comments.

Config flows one way: TOML → `load` → frozen dataclasses → builders. Every field carries a help
text (`option(default, help)`) that becomes the comment above it in `config init` output and in
docs/config.md. This module holds the schema and its value rules; `config_parse` (`load`,
`loads`, `from_dict`) gathers *every* problem (unknown keys with a did-you-mean, wrong types,
value and cross-field rules, keys set twice) into one `ConfigError`, one line each, with the file
and line, in file order. `config_check.check` (for `macasr config check`) also reports the files
a config names that do not exist; `load` does not, as each command needs only some of them.
`config_render` writes configs back as commented TOML and docs/config.md. All their public names
are reachable as `macasr.config.NAME`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re

import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from macasr.data.augment import AugmentConfig, uses_waveform
from macasr.errors import ConfigError
from macasr.model.connector_config import CONNECTORS, DOWNSAMPLERS, ConnectorConfig, MLPConnectorConfig
from macasr.model.encoder_config import ENCODERS, EncoderConfig, WhisperEncoderConfig
from macasr.model.lora import LoraConfig
from macasr.registry import ComponentConfig, Registry, option

DEFAULT_PREFIX = "Transcribe the following audio to text.\n\nAudio:"
DEFAULT_SUFFIX = "\n\nTranscription:"


@dataclasses.dataclass(frozen=True)
class LLMConfig:
    path: str = option("Qwen/Qwen3-1.7B", "Causal LM: Hugging Face id or local folder (AutoModelForCausalLM).")
    train: bool = option(False, "Fine-tune all LLM weights (false keeps the LLM frozen).")
    attn_implementation: str = option("sdpa", "Attention kernel passed to from_pretrained: sdpa, eager, flash_attention_2.")
    trust_remote_code: bool = option(False, "Run model code shipped with the checkpoint. Only for sources you trust.")
    lora: LoraConfig = option(LoraConfig(), "LoRA adapters on the LLM.")

    def validate(self) -> list[str]:
        problems = [] if self.path else ["[model.llm] path: must name a model id or folder"]
        if self.train and self.lora.enabled:
            # LoRA freezes the base weights; training them too would be full fine-tuning in disguise.
            problems.append("[model.llm] train: LoRA ([model.llm.lora] enabled) and full fine-tuning (train = true) "
                            "are mutually exclusive; set one of them to false")
        return problems


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    encoder: EncoderConfig = option(WhisperEncoderConfig(), "Speech encoder.", registry="ENCODERS")
    connector: ConnectorConfig = option(MLPConnectorConfig(), "Trainable projection into the LLM.", registry="CONNECTORS")
    llm: LLMConfig = option(LLMConfig(), "Decoder-only language model.")


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    prefix: str = option(DEFAULT_PREFIX, "Text before the speech embeddings.")
    suffix: str = option(DEFAULT_SUFFIX, "Text after the speech embeddings; the transcript follows it.")
    style: Literal["plain", "chat"] = option("plain", "plain: prefix + speech + suffix as raw text; chat: inside the tokenizer's chat template (user turn).")


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """One named corpus (`[datasets.NAME]`), used by name in `[data] train`/`valid`,
    `[eval] test_sets` and `macasr eval --dataset NAME`."""

    manifest: list[str] = option([], "Manifests: macasr JSON Lines, lhotse CutSet (*.jsonl.gz) or Shar folders.")
    weight: float = option(1.0, "Mixing weight among the [data] train datasets (share of cuts drawn).")
    text: Literal["keep", "lower", "whisper", "basic"] = option("keep", "Training targets: keep as written, lower-case, or normalize (whisper, basic) (docs/data.md).")
    drop_annotations: bool = option(False, "Remove annotation tags ([laughter], <unk>, (( )), partial words like th-) from training targets, keeping words.")
    min_duration: float = option(0.0, "Drop training cuts shorter than this many seconds (0 = keep all).")
    max_duration: float = option(0.0, "Drop training cuts longer than this many seconds (0 = keep all).")

    def validate(self) -> list[str]:
        problems = [] if self.manifest else ["manifest: expected at least one manifest path"]
        if not (self.weight > 0 and math.isfinite(self.weight)):
            problems.append(f"weight: must be a positive number, got {self.weight!r}")
        return problems + _duration_problems(self, "")


def _duration_problems(obj: Any, table: str) -> list[str]:
    """min_duration / max_duration: each 0 (off) or positive, and min below max when both are set."""
    prefix = f"[{table}] " if table else ""
    problems = [f"{prefix}{key}: must be 0 (off) or positive, got {getattr(obj, key)}"
                for key in ("min_duration", "max_duration") if getattr(obj, key) < 0]
    if 0 < obj.max_duration < obj.min_duration:
        problems.append(f"{prefix}max_duration: must be at least min_duration ({obj.min_duration:g}), got {obj.max_duration:g}")
    return problems


@dataclasses.dataclass(frozen=True)
class DataConfig:
    train: list[str] = option([], "Training data: dataset names from [datasets.*], or manifest paths.")
    valid: list[str] = option([], "Validation data (names or paths), decoded every valid_every steps for WER.")
    batch_size: int = option(16, "Most cuts in a micro-batch (per process; 0 = no cap, max_batch_seconds alone).")
    max_batch_seconds: float = option(0.0, "Most audio seconds in a micro-batch per process (0 = no cap, batch_size alone).")
    num_buckets: int = option(30, "Duration buckets of the sampler (lhotse DynamicBucketingSampler): more buckets, less padding.")
    quadratic_duration: float = option(0.0, "Count a cut as duration + duration^2 / this when filling batches, for attention's quadratic cost (0 = off; about 15-30 s).")
    min_duration: float = option(0.0, "Drop training cuts shorter than this many seconds (0 = keep all).")
    max_duration: float = option(0.0, "Drop training cuts longer than this many seconds (0 = keep all).")
    num_workers: int = option(2, "DataLoader worker processes that read and featurize audio.")
    on_bad_clip: Literal["skip", "error"] = option("skip", "A missing or unreadable clip: skip and report it (runs/NAME/bad_clips.jsonl), or stop with its path.")
    spec_augment: bool = option(False, "Mask random frequency bands and time spans of training features (SpecAugment).")
    allow_commands: bool = option(False, "Let manifests run shell commands to produce audio (lhotse command sources, Kaldi pipes kept by `data prepare kaldi --allow-pipes`). Only for manifests you trust.")
    cache: str = option("", "Folder of cached encoder frames (`macasr cache build`) to train from instead of running the encoder (\"\" = none).")
    cache_dtype: Literal["fp16", "bf16"] = option("fp16", "How `macasr cache build` stores encoder frames: fp16 (more precise), or bf16 (fp32's range, for frames beyond fp16's ±65504).")
    frame_mask: bool = option(False, "With a cache: mask random bands and spans of the cached encoder frames of training batches (SpecAugment on frames).")

    def validate(self) -> list[str]:
        problems = []
        if self.batch_size < 0:
            problems.append(f"[data] batch_size: must be 0 (no cap) or positive, got {self.batch_size}")
        if self.batch_size == 0 and self.max_batch_seconds == 0:
            problems.append("[data] batch_size: 0 needs a max_batch_seconds cap (both are 0: batches would have no limit)")
        if self.num_workers < 0:
            problems.append("[data] num_workers: must be 0 or more")
        if self.num_buckets < 1:
            problems.append(f"[data] num_buckets: must be at least 1, got {self.num_buckets}")
        for key in ("max_batch_seconds", "quadratic_duration"):
            if getattr(self, key) < 0:
                problems.append(f"[data] {key}: must be 0 (off) or positive, got {getattr(self, key)}")
        return problems + _duration_problems(self, "data")


# Device names macasr knows how to check for availability (see model.build.resolve_device).
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N (N = 0, 1, ...), mps, xpu or xpu:N"
_DEVICE = re.compile(r"auto|cpu|(cuda|mps|xpu)(:\d+)?")


def device_problem(name: str) -> str | None:
    """What is wrong with a device name (`[train] device`, `--device`), or None when it is valid.

    Only the spelling is checked here, so a config written on a laptop loads there; whether the
    device exists is checked when a command resolves it."""
    if _DEVICE.fullmatch(name):
        return None
    hint = "; a GPU is cuda (NVIDIA or AMD), mps (Apple) or xpu (Intel)" if "gpu" in name.lower() else ""
    return f"expected {DEVICE_CHOICES}, got {name!r}{hint}"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    name: str = option("default", "Run name; the run folder is output_dir/name.")
    output_dir: str = option("runs", "Folder that holds run folders.")
    seed: int = option(0, "Seed for weights, data order and dropout.")
    max_steps: int = option(20_000, "Optimizer steps to train for.")
    optimizer: Literal["adamw", "muon"] = option(
        "adamw", "adamw, or muon: Muon for hidden-layer weight matrices at muon_lr, AdamW at lr for the rest "
        "(embeddings, output head, biases, norms, convolutions); docs/training.md compares them.")
    lr: float = option(1e-4, "Peak learning rate (AdamW; with optimizer = \"muon\", of the parameters Muon does not update).")
    muon_lr: float = option(0.02, "Peak learning rate of Muon's matrices (optimizer = \"muon\" only).")
    weight_decay: float = option(0.01, "AdamW weight decay (not applied to biases and norms).")
    warmup_steps: int = option(1_000, "Linear warmup, in optimizer steps.")
    min_lr_ratio: float = option(0.0, "Cosine decays to lr * min_lr_ratio at max_steps.")
    grad_accum: int = option(1, "Micro-batches per optimizer step.")
    grad_clip: float = option(1.0, "Clip the global gradient norm to this (0 = off).")
    precision: Literal["auto", "bf16", "fp32"] = option("auto", "auto = bf16 on CUDA GPUs that support it, fp32 elsewhere.")
    device: str = option("auto", "auto (cuda when available, else cpu), cpu, cuda, cuda:1, mps, xpu.")
    valid_every: int = option(1_000, "Validate (decode the valid set, WER) every this many optimizer steps.")
    patience: int = option(5, "Stop after this many validations without a better WER (0 = never stop early).")
    distributed_timeout_s: int = option(1800, "Several processes: seconds a rank waits for the others in a collective before the run fails with an error (a rank that died or hangs).")
    save_every: int = option(500, "Also write last.pt every this many optimizer steps between validations (0 = only at validation).")
    keep_best: int = option(1, "Checkpoints kept by validation WER: best.pt (the best) and best-step<N>.pt for the next keep_best - 1; worse ones are deleted.")
    max_bad_steps: int = option(5, "Stop after this many refused steps in a row (non-finite loss or gradient, or a skipped out-of-memory batch).")
    on_oom: Literal["skip", "stop"] = option("skip", "Out of device memory on a batch: skip that step (logged with the batch's seconds of audio) or stop the run.")
    prefix_cache: bool = option(True, "While no LLM weight trains, compute the prompt prefix's keys and values once and share them across rows (same loss, less work); false runs the prefix in every row.")
    gradient_checkpointing: bool = option(False, "Recompute the LLM's layer activations in the backward pass instead of storing them (less memory, more compute); needs the LLM to train or LoRA on it.")
    compile_connector: bool = option(False, "torch.compile the connector (dynamic shapes); the first steps are slower while it compiles.")
    init_from: str = option("", "Start from another run's trained weights: a checkpoint (runs/a/best.pt) or an export bundle folder, with this run's own optimizer, schedule and run folder (\"\" = off; --resume wins).")

    def validate(self) -> list[str]:
        checks = {
            "max_steps": self.max_steps >= 1,
            "lr": 0 < self.lr <= 1,
            "muon_lr": 0 < self.muon_lr <= 1,
            "warmup_steps": 0 <= self.warmup_steps <= self.max_steps,
            "grad_accum": self.grad_accum >= 1,
            "grad_clip": self.grad_clip >= 0,
            "valid_every": self.valid_every >= 1,
            "patience": self.patience >= 0,
            "min_lr_ratio": 0 <= self.min_lr_ratio <= 1,
            "distributed_timeout_s": self.distributed_timeout_s >= 1,
            "save_every": self.save_every >= 0,
            "keep_best": self.keep_best >= 1,
            "max_bad_steps": self.max_bad_steps >= 1,
        }
        rules = {
            "max_steps": "must be at least 1",
            "lr": "must be positive and at most 1 (a larger AdamW step overflows float32 at once)",
            "muon_lr": "must be positive and at most 1",
            "warmup_steps": f"must be between 0 and max_steps ({self.max_steps})",
            "grad_accum": "must be at least 1",
            "grad_clip": "must be 0 (off) or positive",
            "valid_every": "must be at least 1",
            "patience": "must be 0 (off) or positive",
            "min_lr_ratio": "must be between 0 and 1",
            "distributed_timeout_s": "must be at least 1 (seconds)",
            "save_every": "must be 0 (only at validation) or positive",
            "keep_best": "must be at least 1 (best.pt)",
            "max_bad_steps": "must be at least 1",
        }
        problems = [f"[train] {key}: {rules[key]}, got {getattr(self, key)!r}" for key, ok in checks.items() if not ok]
        device = device_problem(self.device)
        return problems + ([f"[train] device: {device}"] if device else [])


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    normalizer: Literal["whisper", "english", "basic", "none"] = option("whisper", "Text normalization before WER: whisper (as published), english (whisper without its punctuation quirks), basic, none.")
    batch_size: int = option(16, "Utterances decoded together.")
    batch_seconds: float = option(0.0, "Decode batches of up to this many seconds of padded audio (clips x the longest) instead of batch_size clips (0 = use batch_size).")
    max_tokens_per_second: float = option(10.0, "Token cap per second of audio, a backstop for loops (stop: max_tokens).")
    max_tokens_base: int = option(16, "Tokens allowed on top of the per-second cap.")
    num_beams: int = option(1, "Beam width (1 = greedy search).")
    length_penalty: float = option(1.0, "Beam scores are log-probability / length ** length_penalty; ended beams outrank guard-stopped ones.")
    repeat_ngram_stop: int = option(8, "Repeat guard: end a loop of a 1..n-token unit, once repeated over n tokens and twice (stop: repeat; 0 = off).")
    valid_max_utterances: int = option(0, "Decode at most this many validation utterances (0 = all).")
    test_sets: list[str] = option([], "Datasets (names from [datasets.*]) that `macasr eval` scores when given no --dataset or --manifest.")
    vad: bool = option(True, "Voice activity detection (Silero VAD): a clip without speech gets an empty transcript instead of being decoded (eval, validation, transcribe).")
    max_segment_seconds: float = option(30.0, "transcribe: longer audio is decoded in speech segments of at most this many seconds, split at pauses.")

    def validate(self) -> list[str]:
        problems = []
        if self.batch_size < 1:
            problems.append("[eval] batch_size: must be at least 1")
        if not self.batch_seconds >= 0 or self.batch_seconds == float("inf"):
            problems.append(f"[eval] batch_seconds: must be 0 (use batch_size) or a positive number of seconds, got {self.batch_seconds}")
        if self.max_tokens_per_second <= 0 or self.max_tokens_base < 1:
            problems.append("[eval] max_tokens_per_second and max_tokens_base: must be positive")
        if self.num_beams < 1:
            problems.append(f"[eval] num_beams: must be at least 1, got {self.num_beams}")
        if self.repeat_ngram_stop < 0:
            problems.append(f"[eval] repeat_ngram_stop: must be 0 (off) or positive, got {self.repeat_ngram_stop}")
        if not self.max_segment_seconds > 0:
            problems.append(f"[eval] max_segment_seconds: must be positive, got {self.max_segment_seconds}")
        return problems


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    log_every: int = option(10, "Write a metrics line every this many optimizer steps.")
    wandb: bool = option(False, "Also log to Weights & Biases (pip install 'macasr[wandb]').")
    wandb_project: str = option("macasr", "wandb project name.")
    tensorboard: bool = option(False, "Also write TensorBoard event files to runs/<name>/tensorboard (pip install 'macasr[tensorboard]').")
    curves: bool = option(True, "At the end of training, draw loss and validation WER over steps to runs/<name>/curves.png (needs 'macasr[plots]').")


@dataclasses.dataclass(frozen=True)
class PluginsConfig:
    modules: list[str] = option([], "Your own encoders, connectors and downsamplers (docs/extending.md): modules imported before the config is read, by module name (my_connectors) or .py file (relative to this file's folder).")


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = option(ModelConfig(), "Encoder, connector and LLM.")
    prompt: PromptConfig = option(PromptConfig(), "Prompt around the speech embeddings.")
    data: DataConfig = option(DataConfig(), "Manifests and batching.")
    train: TrainConfig = option(TrainConfig(), "Optimisation and the run folder.")
    eval: EvalConfig = option(EvalConfig(), "Decoding and scoring.")
    logging: LoggingConfig = option(LoggingConfig(), "Metrics, TensorBoard, wandb and curves.")
    augment: AugmentConfig = option(AugmentConfig(), "Waveform augmentation of training cuts, all off by default (docs/augmentation.md).")
    datasets: dict[str, DatasetConfig] = option({}, "Named datasets, one [datasets.NAME] table each.")
    plugins: PluginsConfig = option(PluginsConfig(), "Modules that register your own components.")

    @property
    def run_dir(self) -> Path:
        return Path(self.train.output_dir) / self.train.name

    def validate(self) -> list[str]:
        """Names used in [data] and [eval] must be datasets of [datasets.*]."""
        problems = []
        for table, key, entries in (("data", "train", self.data.train), ("data", "valid", self.data.valid),
                                    ("eval", "test_sets", self.eval.test_sets)):
            for entry in entries:
                if entry in self.datasets or (key != "test_sets" and looks_like_path(entry)):
                    continue
                close = difflib.get_close_matches(entry, list(self.datasets), n=1)
                known = f"did you mean `{close[0]}`?" if close else f"known: {', '.join(self.datasets) or 'none defined'}"
                path = "" if key == "test_sets" else "; a manifest path needs a folder or a file extension"
                problems.append(f"[{table}] {key}: no dataset named `{entry}` in [datasets.*] ({known}){path}")
        return problems + self._cache_problems() + self._checkpointing_problems()

    def _checkpointing_problems(self) -> list[str]:
        """Gradient checkpointing recomputes LLM layers that train: transformers checkpoints only
        layers in training mode, and a frozen LLM without LoRA stays in eval mode."""
        llm = self.model.llm
        if not self.train.gradient_checkpointing or llm.train or llm.lora.enabled:
            return []
        return ["[train] gradient_checkpointing: checkpoints the LLM's layers while they train, but the LLM is frozen "
                "([model.llm] train = false, [model.llm.lora] enabled = false); set it to false, or train the LLM or LoRA on it"]

    def _cache_problems(self) -> list[str]:
        """Cached encoder frames are fixed: nothing may change the audio or the encoder after caching."""
        if not self.data.cache:
            return ["[data] frame_mask: masks cached encoder frames; set [data] cache too (or use spec_augment)"] if self.data.frame_mask else []
        problems = []
        if uses_waveform(self.augment):
            problems.append("[data] cache: cached frames cannot show waveform augmentation ([augment] is on); "
                            "turn one of them off")
        if self.data.spec_augment:
            problems.append("[data] cache: spec_augment masks log-mel features, which a cache of encoder frames "
                            "does not hold; set spec_augment = false")
        encoder = self.model.encoder
        if getattr(encoder, "train", False) or getattr(getattr(encoder, "lora", None), "enabled", False):
            problems.append("[data] cache: the encoder trains ([model.encoder] train = true or its LoRA is enabled), "
                            "so its frames change every step; a cache needs a frozen encoder")
        return problems


DATASET_NAME = re.compile(r"[A-Za-z0-9_-]+")


def looks_like_path(entry: str) -> bool:
    """A [data] train/valid entry is a manifest path when it is not a dataset name and has a
    folder or an extension ("train.jsonl", "data/cuts"); otherwise it is a (mistyped) name."""
    return not DATASET_NAME.fullmatch(entry) or "." in entry


# Named in fields' metadata: `registry=` for a component table, `choices=` for a string naming one.
_REGISTRIES: dict[str, Registry[Any]] = {"ENCODERS": ENCODERS, "CONNECTORS": CONNECTORS, "DOWNSAMPLERS": DOWNSAMPLERS}


# ----------------------------------------------------------------------------- presets

PRESET_PACKAGE = "macasr.configs"


def preset_names() -> list[str]:
    return sorted(p.name.removesuffix(".toml") for p in resources.files(PRESET_PACKAGE).iterdir() if p.name.endswith(".toml"))


def load_preset(name: str) -> Config:
    names = preset_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        raise ConfigError(f"unknown preset `{name}`; {hint}choose one of: {', '.join(names)}")
    from macasr.config_parse import loads

    return loads(resources.files(PRESET_PACKAGE).joinpath(f"{name}.toml").read_text("utf-8"), f"preset {name}")


def replace(cfg: Any, **changes: Any) -> Any:
    """`dataclasses.replace` with dotted keys: replace(cfg, **{"train.lr": 1e-3})."""
    grouped: dict[str, dict[str, Any]] = {}
    direct = {}
    for dotted, value in changes.items():
        head, _, rest = dotted.partition(".")
        if rest:
            grouped.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    for head, sub in grouped.items():
        direct[head] = replace(getattr(cfg, head), **sub)
    return dataclasses.replace(cfg, **direct)


def resolve_paths(cfg: Config, base: Path | None = None) -> Config:
    """Make relative paths that exist under `base` (default: cwd) absolute, so a run's config and
    checkpoints keep working from any folder. Hub ids and not-yet-existing paths stay as written."""
    base = base or Path.cwd()

    def fix(p: str) -> str:
        candidate = base / p
        return str(candidate.resolve()) if p and not Path(p).is_absolute() and candidate.exists() else p

    return replace(
        cfg,
        **{
            "model.encoder.path": fix(cfg.model.encoder.path),
            "model.llm.path": fix(cfg.model.llm.path),
            "data.train": [p if p in cfg.datasets else fix(p) for p in cfg.data.train],
            "data.valid": [p if p in cfg.datasets else fix(p) for p in cfg.data.valid],
            "data.cache": fix(cfg.data.cache),
            "train.init_from": fix(cfg.train.init_from),
            "datasets": {k: dataclasses.replace(d, manifest=[fix(p) for p in d.manifest]) for k, d in cfg.datasets.items()},
        },
    )


__all__ = [
    "Config", "ModelConfig", "LLMConfig", "PromptConfig", "DataConfig", "DatasetConfig", "TrainConfig", "EvalConfig",
    "LoggingConfig", "ComponentConfig", "load", "loads", "from_dict", "dump", "dumps", "to_dict",
    "load_preset", "preset_names", "replace", "resolve_paths", "check", "CheckReport", "device_problem",
]


# The parser, the file check (`macasr config check`) and the TOML writer live in their own
# modules; their names stay reachable here (config.load, config.check, config.dump, ...) without
# importing them at start-up, and without an import cycle (they import this module's schema).
_MOVED = {"load": "macasr.config_parse", "loads": "macasr.config_parse", "from_dict": "macasr.config_parse",
          "check": "macasr.config_check", "CheckReport": "macasr.config_check", "dump": "macasr.config_render",
          "dumps": "macasr.config_render", "to_dict": "macasr.config_render", "reference_markdown": "macasr.config_render"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if typing.TYPE_CHECKING:
    from macasr.config_check import CheckReport, check
    from macasr.config_parse import from_dict, load, loads
    from macasr.config_render import dump, dumps, reference_markdown, to_dict
