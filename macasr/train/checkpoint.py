"""Checkpoints: one `.pt` file of tensors and plain types, loaded with `weights_only=True`.

A checkpoint holds the trainable weights only (connector, plus the encoder or LLM when they are
trained), the config as a plain dict, the step and metrics; `last.pt` adds optimizer,
scheduler, RNG and sampler state for resuming. Frozen encoder and LLM weights are never
copied: they are reloaded from their hub id or folder named in the config. Files are written to
a temporary name and renamed (macasr.fileio), so a crash never leaves a half-written checkpoint;
a checkpoint with NaN or infinite weights is never written, nor loaded.
"""

from __future__ import annotations

import dataclasses
import pickle
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from macasr import __version__
from macasr.errors import CheckpointError
from macasr.fileio import atomic_open

FORMAT = "macasr-checkpoint"
VERSION = 1


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu() for name, p in model.named_parameters() if p.requires_grad}


def model_payload(model: torch.nn.Module, cfg: Any, step: int = 0, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """What every checkpoint holds: the config as plain data, trainable weights, step, metrics."""
    from macasr.config import to_dict

    return {"config": to_dict(cfg), "model": trainable_state(model), "step": step, "metrics": metrics or {}}


def rng_state() -> dict[str, Any]:
    """Python's, numpy's, torch's and (when present) every CUDA device's RNG state, as tensors and
    plain types (numpy's key array becomes an int64 tensor)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(), "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Undo `rng_state` (a last.pt without numpy's state leaves numpy's RNG as it is)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def nonfinite_weight(state: dict[str, torch.Tensor]) -> str | None:
    """Name of the first floating tensor holding NaN or ±inf, else None."""
    return next((n for n, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Atomically write `payload` (+ format tag and version) to `path`, with the umask's mode.

    Raises CheckpointError, writing nothing, when a weight holds NaN or ±inf: such a file would
    only turn every later transcript empty; and when the write fails (disk full, read-only
    folder), naming the path and the cause: the earlier file at `path`, if any, is untouched.
    """
    path = Path(path)
    bad = nonfinite_weight(payload.get("model", {}))
    if bad is not None:
        raise CheckpointError(f"{path}: not written: weight {bad} holds NaN or infinite values")
    data = {"format": FORMAT, "version": VERSION, "macasr_version": __version__, **payload}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as f:
            torch.save(data, f)
    except OSError as e:
        raise CheckpointError(f"{path}: not written ({_os_reason(e)}); {_previous(path)}") from None
    except RuntimeError as e:  # torch's zip writer turns the file's OSError into "unexpected pos ..."
        cause = _os_error(e)
        if cause is None and not any(word in str(e) for word in ("write", "inline_container")):
            raise
        reason = _os_reason(cause) if cause is not None else _first_sentence(str(e))
        raise CheckpointError(f"{path}: not written ({reason}); {_previous(path)}") from None
    return path


def _os_reason(error: OSError) -> str:
    """'No space left on device' / 'Permission denied' (+ the path when it is another one)."""
    reason = error.strerror or str(error) or type(error).__name__
    return f"{reason}: {error.filename}" if error.filename else reason


def _os_error(error: BaseException) -> OSError | None:
    """The OSError an exception was raised while handling (torch.save's writer hides it so)."""
    seen = error.__cause__ or error.__context__
    while seen is not None and not isinstance(seen, OSError):
        seen = seen.__cause__ or seen.__context__
    return seen


def _previous(path: Path) -> str:
    """What a failed write left, for its message."""
    if path.is_file():
        return f"the previous {path.name} is unchanged"
    return f"no earlier {path.name} exists"


def _first_sentence(text: str) -> str:
    """The first line of `text`, cut after its first full sentence (never mid-sentence)."""
    line = next((x.strip() for x in text.splitlines() if x.strip()), "")
    return re.split(r"(?<=[.!?])\s+", line, maxsplit=1)[0]


def _refusal_reason(message: str) -> str:
    """What torch's weights-only unpickler objected to, without its advice to switch it off.

    torch's message is paragraphs: "Weights only load failed. ... Re-running `torch.load` with
    `weights_only` set to `False` will likely succeed ...", then the reason ("Trying to load
    unsupported GLOBAL posix.system ...", "Unsupported operand 149"), then a docs link.
    """
    lines = [x.strip() for x in message.splitlines() if x.strip()]
    useful = [x for x in lines if "weights_only" not in x and not x.startswith(("Weights only load failed", "Check the documentation"))]
    return _first_sentence(useful[0]) if useful else "it holds objects other than tensors and plain data"


def _torch_load(path: Path, map_location: str | torch.device) -> Any:
    """`torch.load(weights_only=True)`; every failure becomes a one-line CheckpointError."""
    try:
        # torch warns about the pickle protocol of files it then refuses anyway; the error below
        # says all a user can act on, so its warnings would only bury it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise CheckpointError(f"{path}: not a readable checkpoint, truncated or corrupted ({_first_sentence(str(e))})") from None
        raise CheckpointError(
            f"{path}: refused by the safe loader: the file holds more than tensors and plain data "
            f"({_refusal_reason(str(e))}); macasr never runs code from a checkpoint"
        ) from None
    except Exception as e:  # noqa: BLE001 - arbitrary bytes make torch raise almost any type
        # torch's RuntimeErrors are sentences; a bare KeyError '101' needs its type to mean anything.
        sentence = _first_sentence(str(e))
        reason = sentence if sentence and isinstance(e, RuntimeError) else f"{type(e).__name__}: {sentence}".rstrip(": ")
        raise CheckpointError(f"{path}: not a readable checkpoint, truncated or corrupted ({reason})") from None


def _check_path(path: Path) -> None:
    """A missing path, a folder and an empty file each get their own message."""
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.pt"))
        inside = f"it holds {', '.join(found)}" if found else "it holds no .pt file"
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file ({inside}); give the .pt file itself")
    if not path.exists():
        looked = "" if path.is_absolute() else f" (looked for {path.resolve()})"
        raise CheckpointError(f"{path}: no such checkpoint file{looked}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the checkpoint file is empty (0 bytes); it was not written or copied completely")
    with path.open("rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive ("PK\x03\x04"); files of torch < 1.6 start with a pickle protocol byte.
    if not head.startswith(b"PK") and head[:1] != b"\x80":
        raise CheckpointError(f"{path}: not a checkpoint file (torch checkpoints are zip archives; this one starts "
                              f"with {head!r}); give the .pt file a run wrote, such as its last.pt")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a macasr checkpoint safely; CheckpointError names the file and what is wrong."""
    path = Path(path)
    _check_path(path)
    data = _torch_load(path, map_location)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a macasr checkpoint (no '{FORMAT}' tag)")
    if data.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: written by a newer macasr (format {data['version']}); upgrade macasr")
    require(data, ("config", "model", "step"), path, "any use")
    if not isinstance(data["model"], dict) or not all(isinstance(t, torch.Tensor) for t in data["model"].values()):
        raise CheckpointError(f"{path}: its 'model' part is not a mapping of weight names to tensors")
    return data


def require(data: dict[str, Any], parts: tuple[str, ...], path: str | Path, purpose: str, hint: str = "") -> None:
    """CheckpointError naming every part of `parts` that `data` lacks (instead of a KeyError)."""
    missing = [p for p in parts if p not in data]
    if missing:
        raise CheckpointError(f"{path}: lacks {', '.join(missing)}, needed for {purpose}{'; ' + hint if hint else ''}")


def _shape(t: torch.Tensor | torch.Size) -> str:
    return f"[{', '.join(map(str, t.shape if isinstance(t, torch.Tensor) else t))}]"


def _by_part(names: list[str]) -> str:
    """'12 under llm. (e.g. llm.model.layers.0.q_proj.weight)' for each top-level part."""
    parts: dict[str, list[str]] = {}
    for n in names:
        parts.setdefault(n.split(".", 1)[0], []).append(n)
    return "; ".join(f"{len(v)} under {k}. (e.g. {v[0]})" for k, v in parts.items())


def load_trainable(
    model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path, built_from: str = "its stored config",
    params: dict[str, torch.nn.Parameter] | None = None,
) -> None:
    """Load trainable weights: the same names and shapes as the model's trainable parameters,
    all finite. CheckpointError names the first weight that does not fit, and both shapes;
    `built_from` says where the model's config came from. `params`: the parameters `state` must
    fill (default: every trainable one; a warm start passes those of the parts it loads)."""
    if params is None:
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, extra = [n for n in params if n not in state], [n for n in state if n not in params]
    if missing or extra:
        detail = (f"it lacks weights the model trains: {_by_part(missing)}" if missing
                  else f"it holds weights the model does not train: {_by_part(extra)}")
        raise CheckpointError(f"{source}: weights were saved for a different set of trained parts ({detail})")
    for name, param in params.items():
        if state[name].shape != param.shape:
            raise CheckpointError(
                f"{source}: weight {name} has shape {_shape(state[name])} in the checkpoint but {_shape(param)} "
                f"in the model built from {built_from}"
            )
    bad = nonfinite_weight(state)
    if bad is not None:
        raise CheckpointError(f"{source}: weight {bad} holds NaN or infinite values (written by a diverged run)")
    model.load_state_dict(state, strict=False)


@dataclasses.dataclass
class Restored:
    """A model rebuilt from a checkpoint, with where and how it computes."""

    model: Any  # SpeechLLM
    config: Any  # Config
    device: torch.device
    precision: str
    checkpoint: dict[str, Any]
    overrides: list[str] = dataclasses.field(default_factory=list)  # the `--set` flags applied ("KEY=VALUE")


def restore_model(path: str | Path, device: str = "auto", precision: str | None = None,
                  overrides: list[str] | None = None) -> Restored:
    """Rebuild the model a checkpoint was trained as (frozen parts from their ids or folders,
    trained weights from the file), in eval mode. A folder is read as a bundle of `macasr export`.
    `overrides` ("KEY=VALUE", as `--set` takes them) change the stored config first, e.g.
    "model.llm.path=NEW" for a model folder that moved; a config they make invalid, or weights
    that do not fit the model they make, is an error naming them."""
    from macasr import config_overrides
    from macasr.plugins import PluginError

    if Path(path).is_dir():
        from macasr.infer.bundle import restore_bundle

        return restore_bundle(path, device, precision, overrides)
    from macasr.errors import ConfigError
    from macasr.model.build import resolve_device, resolve_precision

    data, sets = load_checkpoint(path), config_overrides.parse_overrides(overrides)
    try:
        cfg = config_overrides.from_dict(data["config"], sets, f"{path} (stored config)")
    except (config_overrides.OverrideError, PluginError):
        raise  # names the flag, or the plugin the stored config needs
    except (ConfigError, KeyError) as e:
        if sets and _valid_alone(data["config"]):
            raise config_overrides.invalid_by_flags(e, overrides, f"{path}'s stored config") from None
        raise CheckpointError(f"{path}: stored config is invalid ({str(e).splitlines()[0]})") from None
    dev = resolve_device(device)
    precision = resolve_precision(precision or cfg.train.precision, dev)
    model = build_restored(cfg, dev, precision, f"{path}: its stored config's", overrides)
    origin = config_overrides.built_from("its stored config", overrides, "(has a model folder it names changed?)")
    try:
        load_trainable(model, data["model"], path, origin)
    except CheckpointError as e:
        if config_overrides.model_flags(overrides) and origin not in str(e):  # a different set of trained parts
            raise CheckpointError(f"{e}; the model was built from {origin}") from None
        raise
    model.eval()
    return Restored(model, cfg, dev, precision, data, [o.text for o in sets])


def _valid_alone(stored: dict[str, Any]) -> bool:
    from macasr import config_overrides
    from macasr.errors import ConfigError

    try:
        config_overrides.from_dict(stored, [])
    except (ConfigError, KeyError):
        return False
    return True


def build_restored(cfg: Any, device: torch.device, precision: str, whose: str, overrides: list[str] | None) -> torch.nn.Module:
    """`build_model` for a stored config. Every local model folder it names that does not exist is
    named in one line first (not one per try), with how to give its new place (`whose`: "best.pt:
    its stored config's"); a folder a `--set` gave is named by that flag."""
    from macasr import config_overrides
    from macasr.errors import MacasrError
    from macasr.model._hf import is_local_path, locate
    from macasr.model.build import build_model

    missing = []
    for part in ("encoder", "llm"):
        part_path = getattr(cfg.model, part).path
        if is_local_path(part_path):
            try:
                locate(f"model.{part}", part_path)
            except MacasrError as e:
                missing.append(e)
    try:
        if missing:
            raise missing[0]
        return build_model(cfg, device, precision)
    except MacasrError as e:
        raise config_overrides.moved_model_hint(missing or [e], whose, overrides) from None
