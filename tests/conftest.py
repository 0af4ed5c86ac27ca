"""Shared fixtures: tiny real models saved once per session and loaded through from_pretrained."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from macasr import config as config_module, testing  # noqa: E402
from macasr.config import Config  # noqa: E402

# Tiny models are dominated by per-op overhead: one thread each is faster than two fighting
# over a 2-core CI machine (and pytest-xdist can then use both cores).
torch.set_num_threads(1)

SENTENCES = ["the cat sat on the mat", "hello world", "seven green apples", "please call john at nine"]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    tokenizer = testing.train_tokenizer(SENTENCES * 5, vocab_size=150)
    return testing.save_tiny_whisper(root / "whisper"), testing.save_tiny_qwen3(root / "qwen3", tokenizer)


@pytest.fixture(scope="session")
def tiny_config(tiny_models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Config:
    whisper, qwen = tiny_models
    return config_module.replace(
        Config(),
        **{
            "model.encoder.path": str(whisper), "model.llm.path": str(qwen), "model.connector.hidden_dim": 64,
            "model.connector.downsample": 2, "data.num_workers": 0, "data.batch_size": 4,
            "train.output_dir": str(tmp_path_factory.mktemp("runs")), "train.device": "cpu",
            "eval.batch_size": 4, "eval.normalizer": "basic",
        },
    )


@pytest.fixture
def model(tiny_config: Config):
    from macasr.model.build import build_model

    return build_model(tiny_config).eval()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small espeak-ng corpus (manifests with known transcripts)."""
    from macasr.data import synth

    return synth.build_corpus(tmp_path_factory.mktemp("corpus"), n_train=32, n_valid=6, n_test=6, n_unseen=4, seed=1)


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * 16_000)) * 0.1).astype(np.float32)
