"""Checkpoints: one `.pt` file of tensors and plain types, loaded with `weights_only=True`.

A checkpoint holds the trainable weights only (connector, plus the encoder or LLM when they are
trained), the config as a plain dict, the step and metrics; `last.pt` adds optimizer,
scheduler, RNG and sampler state for resuming. Frozen encoder and LLM weights are never
copied: they are reloaded from their hub id or folder named in the config. Files are written to
a temporary name and renamed, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from macasr import __version__
from macasr.errors import CheckpointError

FORMAT = "macasr-checkpoint"
VERSION = 1


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu() for name, p in model.named_parameters() if p.requires_grad}


def model_payload(model: torch.nn.Module, cfg: Any, step: int = 0, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """What every checkpoint holds: the config as plain data, trainable weights, step, metrics."""
    from macasr.config import to_dict

    return {"config": to_dict(cfg), "model": trainable_state(model), "step": step, "metrics": metrics or {}}


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Atomically write `payload` (+ format tag and version) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "version": VERSION, "macasr_version": __version__, **payload}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a macasr checkpoint safely; CheckpointError names the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable macasr checkpoint ({first[:200]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a macasr checkpoint (no '{FORMAT}' tag)")
    if data.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: written by a newer macasr (format {data['version']}); upgrade macasr")
    return data


def load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load trainable weights; every trainable parameter must be present, nothing extra."""
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise CheckpointError(f"{source}: weights do not fit the model built from its config ({detail})")
    model.load_state_dict(state, strict=False)


@dataclasses.dataclass
class Restored:
    """A model rebuilt from a checkpoint, with where and how it computes."""

    model: Any  # SpeechLLM
    config: Any  # Config
    device: torch.device
    precision: str
    checkpoint: dict[str, Any]


def restore_model(path: str | Path, device: str = "auto", precision: str | None = None) -> Restored:
    """Rebuild the model a checkpoint was trained as (frozen parts from their ids or folders,
    trained weights from the file), in eval mode."""
    from macasr import config as config_module
    from macasr.errors import ConfigError
    from macasr.model.build import build_model, resolve_device, resolve_precision

    data = load_checkpoint(path)
    try:
        cfg = config_module.from_dict(data["config"], source=f"{path} (stored config)")
    except (ConfigError, KeyError) as e:
        raise CheckpointError(f"{path}: stored config is invalid ({str(e).splitlines()[0]})") from None
    dev = resolve_device(device)
    precision = resolve_precision(precision or cfg.train.precision, dev)
    model = build_model(cfg, dev, precision)
    load_trainable(model, data["model"], path)
    model.eval()
    return Restored(model, cfg, dev, precision, data)
