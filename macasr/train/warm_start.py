"""Warm starts: `[train] init_from` begins a new run from another run's trained weights.

The weights come from a checkpoint (best.pt, last.pt, an averaged .pt) or an export bundle folder.
They are grouped into trained parts (`part_of`: the connector, a part's LoRA adapters, a fully
trained encoder or LLM). The checkpoint may hold fewer parts than this run trains, the two-stage
recipe (stage 1 trains the connector, stage 2 adds LoRA and starts from stage 1): the parts it holds
must fit exactly (`checkpoint.load_trainable` names the first weight that does not), the others
start fresh (LoRA adapters as peft initialises them, B = 0, so the model starts as the checkpoint's).
A checkpoint holding a part this run does not train is refused: dropping trained weights silently
would start from a model other than the one asked for. Only the weights are taken: the optimizer,
the learning-rate schedule, the step count and the run folder are this run's own. A resumed run
(--resume) ignores init_from: its last.pt already holds its weights.
"""

from __future__ import annotations

from collections.abc import Iterable
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

    The parts the checkpoint holds are loaded, the parts it lacks start fresh (the line names both).
    CheckpointError, one line, when the weights of a part do not fit: '[train] init_from runs/a/best.pt:
    weight connector.proj.weight has shape [64, 256] in the checkpoint but [128, 256] in the model
    built from this run's config', or when the checkpoint holds a part this run does not train, or a
    part of another component ("the checkpoint's connector is 'linear', this run's is 'mlp'", said
    first: the weights of one connector type loaded into another would be meaningless even where
    names and shapes happen to match). With `resuming` nothing is loaded (the resume's last.pt wins)."""
    source = cfg.train.init_from
    if not source:
        return None
    if resuming:
        return f"{KEY} {source} ignored: a resumed run continues from its last.pt's weights"
    state, stored, step = init_state(source)
    trains = by_part(n for n, p in model.named_parameters() if p.requires_grad)
    held = by_part(state)
    if not held:
        raise CheckpointError(f"{KEY} {source}: holds no trained weights")
    if dropped := [part for part in held if part not in trains]:
        raise CheckpointError(f"{KEY} {source}: holds trained weights of {', '.join(dropped)}, which this run does not "
                              f"train (starting without them would drop them); to keep them, {'; '.join(_enable_hint(p, stored) for p in dropped)}")
    others = _other_components(stored, cfg)
    if swapped := [part for part in ("encoder", "connector") if part in others and any(h.split()[0] == part for h in held)]:
        raise CheckpointError(f"{KEY} {source}: {'; '.join(others[p] for p in swapped)}: weights trained for one "
                              f"{'component' if len(swapped) > 1 else swapped[0]} do not fit another; to start from "
                              f"them, {_same_component_hint(stored, swapped)}, or start without init_from")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad and part_of(n) in held}
    try:
        checkpoint.load_trainable(model, state, f"{KEY} {source}", "this run's config", params)
    except CheckpointError as e:
        if not others:
            raise
        detail = str(e).removeprefix(f"{KEY} {source}: ")
        raise CheckpointError(f"{KEY} {source}: {'; '.join(others.values())} ({detail})") from None
    fresh = [part for part in trains if part not in held]
    line = f"warm start: weights from {source} (step {step}): loaded {', '.join(held)}"
    if fresh:
        line += f"; start fresh: {', '.join(f'{part} ({_fresh_from(part)})' for part in fresh)}"
    line += "; optimizer, schedule and step count start fresh"
    if differs := _model_differences(stored, cfg, fresh):
        line += f"; its [model]/[prompt] settings differ in {', '.join(differs)}"
    return line


def part_of(name: str) -> str:
    """The trained part a weight belongs to, by its macasr name: "connector", "llm LoRA adapters"
    (peft names its adapter weights lora_A, lora_B, ...), "llm (all weights)", and so for the encoder."""
    top = name.split(".", 1)[0]
    if top == "connector":
        return top
    return f"{top} LoRA adapters" if ".lora_" in name else f"{top} (all weights)"


def by_part(names: Iterable[str]) -> list[str]:
    """The distinct parts of `names`, in order of first appearance (the model's own order)."""
    return list(dict.fromkeys(map(part_of, names)))


def _fresh_from(part: str) -> str:
    """Where a part the checkpoint lacks starts from, for the start-up line."""
    if part.endswith("LoRA adapters"):
        return "peft's initialisation, B = 0: the model starts as the checkpoint's"
    if part.endswith("(all weights)"):
        return f"its pretrained weights from [model.{part.split()[0]}] path"
    return "random initialisation"


def _enable_hint(part: str, stored: dict[str, Any]) -> str:
    """What to change so this run trains `part` too (as the checkpoint's run did)."""
    top = part.split()[0]
    if part.endswith("LoRA adapters"):
        lora = stored.get("model", {}).get(top, {}).get("lora", {})
        same = ", ".join(f"{k} = {lora[k]!r}" for k in ("r", "target_modules") if k in lora)
        return f"enable [model.{top}.lora] with the same rank and modules ({same})" if same else f"enable [model.{top}.lora] as it was"
    if part.endswith("(all weights)"):
        return f"set [model.{top}] train = true"
    return f"train the {top} in this run"


def _other_components(stored: dict[str, Any], cfg: Config) -> dict[str, str]:
    """{part: "the checkpoint's connector is 'linear', this run's is 'mlp'"} for each of the encoder
    and connector whose registered name differs, and the LLM when its path or hub id does (a moved
    folder too: named only when the weights then do not fit)."""
    model = stored.get("model", {}) if isinstance(stored, dict) else {}
    ours = {"encoder": cfg.model.encoder.name, "connector": cfg.model.connector.name, "llm": cfg.model.llm.path}
    theirs = {part: (model.get(part) or {}).get("path" if part == "llm" else "name") for part in ours}
    return {part: f"the checkpoint's {'LLM' if part == 'llm' else part} is {theirs[part]!r}, this run's is {ours[part]!r}"
            for part in ours if isinstance(theirs[part], str) and theirs[part] != ours[part]}


def _same_component_hint(stored: dict[str, Any], parts: list[str]) -> str:
    """'set [model.connector] name = "linear" (and that table's other keys as in the checkpoint's config)'."""
    model = stored["model"]
    tables = " and ".join(f'[model.{part}] name = "{model[part]["name"]}"' for part in parts)
    return f"set {tables} (and {'those tables' if len(parts) > 1 else 'that table'}'s other keys as in the checkpoint's config)"


def _model_differences(stored: dict[str, Any], cfg: Config, fresh: list[str]) -> list[str]:
    """The dotted [model]/[prompt] keys whose stored value differs from this run's (e.g. a moved
    LLM folder, or a new prompt), worth a note: the weights fit, but were trained for those. The
    keys that turn on a part starting fresh (model.llm.lora.*, model.llm.train) are the point of
    a two-stage recipe, not a difference worth a note."""
    from macasr.train.engine import config_changes
    from macasr.train.resume import changed_key, stored_with_defaults

    expected = tuple(f"model.{p.split()[0]}.{'lora.' if p.endswith('LoRA adapters') else 'train'}" for p in fresh if p != "connector")
    changes = config_changes(stored_with_defaults(stored), to_dict(cfg))
    return [key for key in map(changed_key, changes) if not key.startswith(expected)]
