"""The bundle `macasr export` writes, and how `restore_model` loads one (docs/export.md).

A bundle is a folder of safetensors, JSON and TOML only (nothing is unpickled):

    bundle.json                 format tag, version, where each part comes from (hub id and
                                revision, or a folder of this bundle), step, metrics
    config.toml                 the run's config; a part stored here has path = "./encoder" / "./llm"
    connector.safetensors       the connector's weights (its own state_dict names)
    adapter_config.json         the LLM's LoRA adapters in PEFT's layout (with LoRA on the LLM),
    adapter_model.safetensors   so `PeftModel.from_pretrained(base_llm, BUNDLE)` loads them
    encoder_adapter/            the encoder's LoRA adapters, the same layout, for the HF encoder module
    encoder/, llm/              a part in Hugging Face layout (config, safetensors, tokenizer or
                                feature extractor) when it was trained or came from a local folder
    llm_merged/                 with --merge-lora: the LLM with its adapters merged in
    plugins/NAME.py             the run's plugin files ([plugins] modules), which config.toml names there
    README.md                   the model card

A bundle is loaded by rebuilding the model from config.toml (parts from their hub id or from the
bundle's folders) and loading the trained weights from the files above, checked by
`checkpoint.load_trainable` exactly like a checkpoint's.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from macasr.errors import CheckpointError

if TYPE_CHECKING:
    import torch

    from macasr.config import Config
    from macasr.train.checkpoint import Restored

FORMAT = "macasr-bundle"
VERSION = 1
MANIFEST = "bundle.json"
CONFIG = "config.toml"
CONNECTOR = "connector.safetensors"
ADAPTER_CONFIG = "adapter_config.json"  # PEFT's own file names
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PARTS = ("encoder", "llm")
ADAPTER_FOLDERS = {"llm": ".", "encoder": "encoder_adapter"}  # the LLM's adapter at the top, for PeftModel.from_pretrained(base, BUNDLE)
# Where each part's Hugging Face model sits inside SpeechLLM: PEFT names weights relative to it.
HF_MODULE = {"llm": "llm.", "encoder": "encoder.model."}
PEFT_PREFIX = "base_model.model."  # what PeftModel.save_pretrained puts before every adapter weight
ADAPTER_NAME = "default"  # the adapter name peft.inject_adapter_in_model gives (apply_lora)


def to_peft_name(name: str, part: str) -> str:
    """macasr's `llm.model.layers.0.self_attn.q_proj.lora_A.default.weight` → PEFT's
    `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` (PEFT drops the adapter name)."""
    pieces = name.removeprefix(HF_MODULE[part]).split(".")
    kept = [p for i, p in enumerate(pieces) if not (p == ADAPTER_NAME and i and pieces[i - 1].startswith("lora_"))]
    return PEFT_PREFIX + ".".join(kept)


def from_peft_name(key: str, part: str) -> str:
    """The inverse of `to_peft_name`; a key that is not PEFT's is returned unchanged (and then
    refused by `load_trainable` as a weight the model does not train)."""
    if not key.startswith(PEFT_PREFIX):
        return key
    pieces = key.removeprefix(PEFT_PREFIX).split(".")
    at = next((i for i, p in enumerate(pieces) if p.startswith("lora_")), None)
    if at is not None:
        pieces.insert(at + 1, ADAPTER_NAME)
    return HF_MODULE[part] + ".".join(pieces)


def hub_snapshot(repo_id: str) -> Path | None:
    """The hub cache's folder of the revision `main` points to (named after its commit), or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return Path(found).parent if isinstance(found, str) else None


def warn_on_new_revisions(folder: Path, manifest: dict[str, Any]) -> None:
    """Warn when a hub model the bundle names was exported at another revision than the one just
    loaded: its frozen weights are then not those the connector and adapters were trained with."""
    for part, info in manifest.get("parts", {}).items():
        if info.get("folder") or not info.get("revision"):
            continue
        loaded = hub_snapshot(info["source"])
        if loaded is not None and loaded.name != info["revision"]:
            warnings.warn(f"{folder}: its {part} {info['source']} was exported at revision {info['revision']}, but revision "
                          f"{loaded.name} was loaded; transcripts may differ from the exported model's", stacklevel=3)


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def not_a_bundle(folder: Path) -> CheckpointError:
    """The error for a folder that `restore_model` cannot load."""
    found = sorted(p.name for p in folder.glob("*.pt"))
    inside = f"it holds {', '.join(found)}: give one of those files" if found else "it holds no .pt checkpoint either"
    return CheckpointError(f"{folder}: not a macasr bundle (no {MANIFEST}; {inside}); give a checkpoint file "
                           "(best.pt, last.pt) or a folder written by `macasr export`")


def read_manifest(folder: Path) -> dict[str, Any]:
    """bundle.json, checked: CheckpointError for a folder that is not a bundle of this format."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint file or bundle folder")
    if not is_bundle(folder):
        raise not_a_bundle(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder / MANIFEST}: not readable JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{folder / MANIFEST}: not a macasr bundle manifest (no '{FORMAT}' tag)")
    if not isinstance(manifest.get("version"), int) or manifest["version"] > VERSION:
        raise CheckpointError(f"{folder / MANIFEST}: written by a newer macasr (bundle format {manifest.get('version')}); upgrade macasr")
    return manifest


def bundle_config(folder: Path) -> Config:
    """config.toml with the parts this bundle stores (`./encoder`, `./llm`) pointing into `folder`."""
    from macasr import config as config_module
    from macasr.errors import ConfigError
    from macasr.plugins import PluginError

    path = folder / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{folder}: the bundle lacks {CONFIG} (an incomplete copy?)")
    try:
        cfg = config_module.load(path)
    except PluginError:
        raise  # "BUNDLE/config.toml: plugin module NAME ... cannot be imported: ..."
    except ConfigError as e:  # its first line already starts with the file (and line)
        raise CheckpointError(f"{str(e).splitlines()[0]} (the bundle's config is invalid)") from None
    return config_module.resolve_paths(cfg, base=folder)


def read_weights(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A safetensors file → {name: tensor}; CheckpointError naming the file when it is missing or damaged."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{path}: missing from the bundle ({what}); the bundle is incomplete")
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None


def trained_state(folder: Path, cfg: Config, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every weight the model trains, by macasr name: the connector's and the adapters' from
    their files; a fully trained part's from its own folder, which `build_model` just loaded."""
    state = {f"connector.{k}": v for k, v in read_weights(folder / CONNECTOR, "the connector's weights").items()}
    for part in PARTS:
        part_cfg = getattr(cfg.model, part)
        if part_cfg.lora.enabled:
            file = folder / ADAPTER_FOLDERS[part] / ADAPTER_WEIGHTS
            state |= {from_peft_name(k, part): v for k, v in read_weights(file, f"the {part}'s LoRA adapters").items()}
        elif part_cfg.train:
            state |= {n: p.detach() for n, p in model.named_parameters() if n.startswith(f"{part}.") and p.requires_grad}
    return state


def restore_bundle(path: str | Path, device: str = "auto", precision: str | None = None,
                   overrides: list[str] | None = None) -> Restored:
    """The model a bundle holds, in eval mode (the `restore_model` of a bundle folder); `overrides`
    ("KEY=VALUE") change its config first."""
    from macasr.config_overrides import built_from, override, parse_overrides
    from macasr.model.build import resolve_device, resolve_precision
    from macasr.train.checkpoint import Restored, build_restored, load_trainable

    folder = Path(path)
    manifest = read_manifest(folder)
    stored = bundle_config(folder)
    cfg = override(stored, overrides, f"{folder / CONFIG}")
    _refuse_moved_trained_parts(folder, stored, cfg, overrides or [])
    dev = resolve_device(device)
    precision = resolve_precision(precision or cfg.train.precision, dev)
    model = build_restored(cfg, dev, precision, f"{folder}: its {CONFIG}'s", overrides)
    state = trained_state(folder, cfg, model)
    load_trainable(model, state, folder, built_from(f"its {CONFIG}", overrides))
    warn_on_new_revisions(folder, manifest)
    model.eval()
    data = {"config": _plain(cfg), "model": state, "step": manifest.get("step", 0), "metrics": manifest.get("metrics", {}), "bundle": manifest}
    return Restored(model, cfg, dev, precision, data, [o.text for o in parse_overrides(overrides)])


def _refuse_moved_trained_parts(folder: Path, stored: Config, cfg: Config, overrides: list[str]) -> None:
    """A part trained in full is the bundle's own folder (`llm/`, `encoder/`): pointing its path
    elsewhere would load other weights and report them as this model's. CheckpointError names
    the flag."""
    for part in PARTS:
        before, after = getattr(stored.model, part), getattr(cfg.model, part)
        if before.train and not before.lora.enabled and after.path != before.path:
            flag = next((o for o in overrides if o.split("=", 1)[0].strip() == f"model.{part}.path"), f"model.{part}.path")
            raise CheckpointError(f"--set {flag}: {folder}'s {part} was trained in full and its weights are the bundle's "
                                  f"{Path(before.path).name}/ folder; pointing it elsewhere would replace them (drop the flag)")


def _plain(cfg: Config) -> dict[str, Any]:
    from macasr.config_render import to_dict

    return to_dict(cfg)
