"""Warm starts: `[train] init_from` begins a new run from another run's trained weights.

The weights come from a checkpoint (best.pt, last.pt, an averaged .pt) or an export bundle folder
and must fit the model this run builds exactly: the same trained weight names and shapes
(`checkpoint.load_trainable`, which names the first weight that does not fit). Only the weights
are taken: the optimizer, the learning-rate schedule, the step count and the run folder are this
run's own. A resumed run (--resume) ignores init_from: its last.pt already holds its weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from macasr.config import Config, to_dict
from macasr.errors import CheckpointError
from macasr.train import checkpoint

KEY = "[train] init_from"


def init_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], int]:
    """→ (trained weights by macasr name, the config they were trained with as plain data, their step)
    of a checkpoint file or an export bundle folder; CheckpointError (prefixed with the key) otherwise.

    A bundle gives its connector's and LoRA adapters' weights; a bundle of a fully trained encoder
    or LLM is refused (that part's weights are its own model folder, which the new run would have to
    name in [model]), as is any folder that is not a bundle."""
    from macasr.infer import bundle

    path = Path(path)
    try:
        if not path.is_dir():
            data = checkpoint.load_checkpoint(path)
            return data["model"], data["config"], int(data["step"])
        manifest = bundle.read_manifest(path)
        cfg = bundle.bundle_config(path)
        full = [part for part in bundle.PARTS if getattr(cfg.model, part).train and not getattr(cfg.model, part).lora.enabled]
        if full:
            raise CheckpointError(
                f"{path}: a bundle whose {full[0]} was trained in full cannot be a warm start here (its weights are the "
                f"bundle's {full[0]}/ model folder); give the run's best.pt, or set [model.{full[0]}] path to that folder "
                "and init_from the checkpoint")
        return bundle.trained_state(path, cfg, torch.nn.Module()), to_dict(cfg), int(manifest.get("step", 0))
    except CheckpointError as e:
        raise CheckpointError(f"{KEY} {e}") from None


def warm_start(model: torch.nn.Module, cfg: Config, resuming: bool = False) -> str | None:
    """Load `cfg.train.init_from`'s weights into `model` (in place, before the optimizer sees them)
    → the line the run prints about it, or None when init_from is off.

    CheckpointError, one line, when the weights do not fit: '[train] init_from runs/a/best.pt:
    weight connector.proj.weight has shape [64, 256] in the checkpoint but [128, 256] in the model
    built from this run's config'. With `resuming` nothing is loaded (the resume's last.pt wins)."""
    source = cfg.train.init_from
    if not source:
        return None
    if resuming:
        return f"{KEY} {source} ignored: a resumed run continues from its last.pt's weights"
    state, stored, step = init_state(source)
    checkpoint.load_trainable(model, state, f"{KEY} {source}", "this run's config")
    line = f"warm start: weights from {source} (step {step}); optimizer, schedule and step count start fresh"
    if differs := _model_differences(stored, cfg):
        line += f"; its [model]/[prompt] settings differ in {', '.join(differs)}"
    return line


def _model_differences(stored: dict[str, Any], cfg: Config) -> list[str]:
    """The dotted [model]/[prompt] keys whose stored value differs from this run's (e.g. a moved
    LLM folder, or a new prompt), worth a note: the weights fit, but were trained for those."""
    from macasr.train.engine import config_changes
    from macasr.train.resume import changed_key, with_defaults

    given = to_dict(cfg)
    return [changed_key(c) for c in config_changes(with_defaults(stored, to_dict(Config())), given)]
