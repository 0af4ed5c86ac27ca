"""`macasr export CKPT --out DIR`: a checkpoint as a self-contained bundle (layout: infer/bundle.py).

What "self-contained" means per part (docs/export.md):
- a part that trained (`train = true`) is written in full, in Hugging Face layout, with the
  tokenizer or feature extractor and config files of its source;
- a part from a local folder is copied (its config, tokenizer and safetensors files), even when
  frozen: a path on the exporting machine means nothing anywhere else;
- a frozen part from the hub (LoRA adapters or not) is referred to by its id and the revision the
  local hub cache holds; loading the bundle needs that model from the hub or the cache.
A plugin file (`[plugins] modules`, a .py path) is copied to plugins/NAME.py and the bundle's
config names it there; a plugin module name (an installed package) cannot be copied: it is kept,
and the manifest, the model card and the export's output say it must be installed.
The trained weights are in safetensors files, LoRA adapters in PEFT's own layout. Nothing in a
bundle is a pickle. The bundle is written in a temporary folder beside DIR and renamed into
place, so a failed export leaves nothing half-written and DIR as it was.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import secrets
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from macasr import __version__
from macasr.errors import CheckpointError, MacasrError
from macasr.infer import bundle
from macasr.infer.bundle import ADAPTER_CONFIG, ADAPTER_FOLDERS, ADAPTER_WEIGHTS, CONFIG, CONNECTOR, MANIFEST, PARTS

if TYPE_CHECKING:
    import torch

    from macasr.config import Config
    from macasr.train.checkpoint import Restored

PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".npy", ".npz", ".joblib"}
# Files of a model folder a bundle copies: configs, tokenizer vocabularies and templates; weights
# (safetensors) only for a frozen part, whose weights are copied byte for byte.
SUPPORT_SUFFIXES = {".json", ".txt", ".model", ".jinja", ".tiktoken"}
WEIGHT_SUFFIX = ".safetensors"
MERGED = "llm_merged"
PLUGINS = "plugins"  # the bundle's folder of copied plugin files


@dataclasses.dataclass(frozen=True)
class PartSource:
    """Where one part (encoder or LLM) comes from, and how the bundle holds it."""

    part: str  # "encoder" | "llm"
    path: str  # [model.<part>] path as the run used it
    folder: Path | None  # the files it was loaded from: the local folder, or its hub cache snapshot
    local: bool
    revision: str | None  # hub commit (from the cache), None for a local folder or when unknown
    weights: str  # "frozen" | "trained" | "lora"

    @property
    def stored(self) -> bool:
        """True when the bundle holds the part itself (./encoder, ./llm)."""
        return self.local or self.weights == "trained"

    def manifest(self) -> dict[str, Any]:
        return {"source": self.path, "revision": self.revision, "folder": self.part if self.stored else None, "weights": self.weights}


def part_source(cfg: Config, part: str) -> PartSource:
    part_cfg = getattr(cfg.model, part)
    weights = "trained" if part_cfg.train else "lora" if part_cfg.lora.enabled else "frozen"
    folder = Path(part_cfg.path).expanduser()
    if folder.is_dir():
        return PartSource(part, part_cfg.path, folder.resolve(), True, None, weights)
    snapshot = bundle.hub_snapshot(part_cfg.path)
    return PartSource(part, part_cfg.path, snapshot, False, snapshot.name if snapshot else None, weights)


# ----------------------------------------------------------------------------- checks before any work


def check_destination(out: Path, inputs: list[Path], force: bool) -> None:
    """Refuse an `--out` that is a file, a non-empty folder without --force, or one that holds an
    input of this export (--force would delete it). Raises MacasrError."""
    if out.exists() and not out.is_dir():
        raise MacasrError(f"--out {out}: is a file; give a folder for the bundle")
    target = out.resolve()
    for p in inputs:
        if p.exists() and (p.resolve() == target or target in p.resolve().parents):
            raise MacasrError(f"--out {out}: holds {p}, which this export reads; give a folder outside it")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise MacasrError(f"--out {out}: the folder is not empty; give a new or empty folder, or --force to replace the bundle in it")
        if not (out / MANIFEST).is_file():  # --force replaces a bundle, never a folder of other files
            raise MacasrError(f"--out {out}: holds files but no {MANIFEST}, so it is not a bundle; --force replaces only "
                              "an earlier bundle: give a new or empty folder")


def classify(state: dict[str, torch.Tensor], sources: dict[str, PartSource]) -> dict[str, dict[str, torch.Tensor]]:
    """Trainable weights by destination: "connector", "<part>_adapter", "<part>" (fully trained).
    A weight that belongs to none is a CheckpointError: exporting must never drop one silently."""
    groups: dict[str, dict[str, torch.Tensor]] = {"connector": {}}
    for name, tensor in state.items():
        part = name.split(".", 1)[0]
        if part == "connector":
            groups["connector"][name.removeprefix("connector.")] = tensor
        elif part in sources and sources[part].weights == "lora" and name.startswith(bundle.HF_MODULE[part]) and ".lora_" in name:
            groups.setdefault(f"{part}_adapter", {})[name] = tensor
        elif part in sources and sources[part].weights == "trained":
            groups.setdefault(part, {})[name] = tensor
        else:
            raise CheckpointError(f"cannot export trained weight {name}: it belongs to no part a bundle stores")
    return groups


# ----------------------------------------------------------------------------- writing the parts


def copy_files(source: Path, dest: Path, *, weights: bool, code: bool) -> list[str]:
    """Copy a model folder's config and tokenizer files (and its safetensors when `weights`, its
    Python files when `code`: trust_remote_code) from `source` to `dest`; the names copied."""
    suffixes = SUPPORT_SUFFIXES | ({WEIGHT_SUFFIX} if weights else set()) | ({".py"} if code else set())
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for file in sorted(source.iterdir()):
        is_index = file.name.endswith(f"{WEIGHT_SUFFIX}.index.json")
        if not file.is_file() or file.suffix not in suffixes or (is_index and not weights):
            continue
        shutil.copyfile(file, dest / file.name)  # follows the hub cache's symlinks to the file itself
        copied.append(file.name)
    return copied


def write_part(dest: Path, source: PartSource, module: torch.nn.Module, code: bool) -> None:
    """The part in Hugging Face layout under `dest`: trained weights through save_pretrained
    (safetensors), a frozen part's weights copied as they are."""
    if source.folder is None:
        raise CheckpointError(f"cannot export [model.{source.part}] path {source.path!r}: its files are neither a local folder "
                              "nor in the hub cache")
    frozen = source.weights != "trained"
    copied = copy_files(source.folder, dest, weights=frozen, code=code)
    if frozen and not any(name.endswith(WEIGHT_SUFFIX) for name in copied):
        raise CheckpointError(f"cannot export [model.{source.part}] path {source.path!r}: it holds no .safetensors weights "
                              "(only pickled ones?), and a bundle holds safetensors only; save it with save_pretrained first")
    if not frozen:
        # The encoder was loaded with a key_mapping (model.encoder.* → *) that transformers cannot
        # revert; its own names load back through the same mapping unchanged.
        module.save_pretrained(dest, save_original_format=source.part == "llm")


def save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})


def write_adapter(dest: Path, source: PartSource, peft_module: Any, adapters: dict[str, torch.Tensor]) -> None:
    """`adapter_config.json` + `adapter_model.safetensors` in PEFT's layout, for the part's HF model."""
    config = copy.deepcopy(peft_module.peft_config[bundle.ADAPTER_NAME])
    config.base_model_name_or_path = source.path
    config.revision = source.revision
    config.inference_mode = True
    if source.part == "llm":
        config.task_type = "CAUSAL_LM"  # PeftModel.from_pretrained then gives a PeftModelForCausalLM (generate)
    dest.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(dest))
    save_weights(dest / ADAPTER_WEIGHTS, {bundle.to_peft_name(n, source.part): t for n, t in adapters.items()})


def write_merged(root: Path, cfg: Config, source: PartSource) -> None:
    """The LLM with its LoRA adapters merged (fp32), loaded and merged by peft itself from the
    adapter just written, saved with save_pretrained."""
    import peft
    import torch

    from macasr import config as config_module
    from macasr.model.llm import load_llm

    base_path = str(root / "llm") if source.stored else source.path
    base, _ = load_llm(config_module.replace(cfg.model.llm, path=base_path), dtype=torch.float32)
    merged = peft.PeftModel.from_pretrained(base, str(root)).merge_and_unload()
    copy_files(root / "llm" if source.stored else source.folder, root / MERGED, weights=False, code=cfg.model.llm.trust_remote_code)
    merged.save_pretrained(root / MERGED)


def copy_plugins(root: Path, modules: list[str]) -> dict[str, str]:
    """Copy each plugin file of `[plugins] modules` to root/plugins/NAME.py (NAME_2.py for a second
    file of the same name) → {entry as the run's config names it: its path in the bundle}; module
    names are not in it. CheckpointError for a plugin file that is gone: the bundle would not load."""
    from macasr.plugins import is_file_entry

    copied: dict[str, str] = {}
    for entry in modules:
        if not is_file_entry(entry) or entry in copied:
            continue
        source = Path(entry).expanduser()
        if not source.is_file():
            raise CheckpointError(f"cannot export plugin file {entry} ([plugins] modules): no such file; the bundle needs it "
                                  "to build the model")
        name, n = f"{PLUGINS}/{source.stem}.py", 1
        while name in copied.values():
            n += 1
            name = f"{PLUGINS}/{source.stem}_{n}.py"
        (root / PLUGINS).mkdir(exist_ok=True)
        shutil.copyfile(source, root / name)
        copied[entry] = name
    return copied


def bundle_config(cfg: Config, sources: dict[str, PartSource], plugin_files: dict[str, str] | None = None) -> Config:
    """The run's config with each part the bundle stores at ./encoder or ./llm, and each plugin
    file at its copy (`copy_plugins`; read relative to the bundle's config.toml)."""
    from macasr import config as config_module

    changes: dict[str, Any] = {f"model.{p}.path": f"./{p}" for p, s in sources.items() if s.stored}
    if plugin_files:
        changes["plugins.modules"] = [plugin_files.get(m, m) for m in cfg.plugins.modules]
    return config_module.replace(cfg, **changes)


def plugin_modules(cfg: Config) -> list[str]:
    """The plugin module names (not files) of `[plugins] modules`: a bundle cannot hold them."""
    from macasr.plugins import is_file_entry

    return [m for m in cfg.plugins.modules if not is_file_entry(m)]


def config_text(cfg: Config, sources: dict[str, PartSource], ckpt: Path, step: int, plugin_files: dict[str, str] | None = None) -> str:
    from macasr.config_render import dumps

    header = [f"# macasr bundle: exported by macasr {__version__} from {ckpt.name} (step {step}).",
              "# Paths starting with ./ are folders of this bundle. Where each part came from:"]
    for s in sources.values():
        where = f"copied here from {s.path}" if s.stored else f"{s.path} at revision {s.revision or 'unknown'} (hub)"
        header.append(f"#   [model.{s.part}] {where}")
    header += [f"#   [plugins] {name} copied here from {entry}" for entry, name in (plugin_files or {}).items()]
    header += [f"#   [plugins] {name}: a module name; install the package that provides it" for name in plugin_modules(cfg)]
    return "\n".join(header) + "\n" + dumps(cfg)


def plugin_notes(out: Path) -> list[str]:
    """What the export's output says about the bundle's plugins (from its bundle.json): the module
    names it needs installed where it is loaded (plugin files are copied in: nothing to say)."""
    plugins = bundle.read_manifest(out).get("plugins") or {}
    return [f"plugin module {name} ([plugins] modules) is not in the bundle: install the package that provides it "
              "wherever the bundle is loaded" for name in plugins.get("modules", [])]


def _plain_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Scalars only, non-finite numbers as null (JSON has no infinity)."""
    plain = {}
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            plain[key] = None
        elif isinstance(value, (str, int, float, bool)) or value is None:
            plain[key] = value
    return plain


def write_bundle(root: Path, restored: Restored, ckpt: Path, report: dict[str, Any] | None, report_path: Path | None,
                 merge_lora: bool) -> None:
    """Every file of the bundle, into the (new, empty) folder `root`."""
    from macasr.fileio import write_atomic
    from macasr.infer.card import model_card
    from macasr.model.build import parameter_counts
    from macasr.train.checkpoint import trainable_state

    model, cfg, data = restored.model, restored.config, restored.checkpoint
    sources = {p: part_source(cfg, p) for p in PARTS}
    groups = classify(trainable_state(model), sources)
    hf_modules = {"encoder": model.encoder.model, "llm": model.llm}
    peft_modules = {"encoder": model.encoder, "llm": model.llm}  # where apply_lora injected the adapters
    for part, source in sources.items():
        if source.stored:
            write_part(root / part, source, hf_modules[part], getattr(cfg.model, part).trust_remote_code if part == "llm" else False)
        if source.weights == "lora":
            write_adapter(root / ADAPTER_FOLDERS[part], source, peft_modules[part], groups.get(f"{part}_adapter", {}))
    save_weights(root / CONNECTOR, groups["connector"])
    if merge_lora:
        write_merged(root, cfg, sources["llm"])
    plugin_files = copy_plugins(root, cfg.plugins.modules)
    manifest = {
        "format": bundle.FORMAT, "version": bundle.VERSION, "macasr_version": __version__, "source_checkpoint": str(ckpt),
        "step": int(data.get("step", 0)), "metrics": _plain_metrics(data.get("metrics", {})),
        "parts": {p: s.manifest() for p, s in sources.items()}, "merged_llm": MERGED if merge_lora else None,
        "plugins": {"files": {name: entry for entry, name in plugin_files.items()}, "modules": plugin_modules(cfg)},
        "overrides": restored.overrides,  # the `--set` flags config.toml was changed by at export ("KEY=VALUE")
    }
    write_atomic(root / CONFIG, config_text(bundle_config(cfg, sources, plugin_files), sources, ckpt, manifest["step"], plugin_files))
    write_atomic(root / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    card = model_card(cfg, manifest, parameter_counts(model), report, report_path.name if report_path else None)
    write_atomic(root / "README.md", card)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars from save_pretrained, no FutureWarnings from transformers' and peft's
    internals while exporting: the export's own line says what was written."""
    from transformers.utils import logging

    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        if bars:
            logging.enable_progress_bar()


def pickles(folder: Path) -> list[Path]:
    """Files under `folder` whose type stores Python pickles (or may)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in PICKLE_SUFFIXES)


# ----------------------------------------------------------------------------- the whole export


def _temporary_folder(out: Path) -> Path:
    """A new hidden folder beside `out`, with the umask's mode (mkdtemp would make it 0700)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = out.with_name(f".{out.name}.{secrets.token_hex(6)}.tmp")
        try:
            tmp.mkdir(0o777)
            return tmp
        except FileExistsError:
            continue


def _umask_modes(folder: Path) -> None:
    """Give every file under `folder` the mode the umask gives new files (0644 under umask 022):
    safetensors writes its files 0600, which would keep a bundle from others on a shared machine."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


def _publish(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; an existing `out` is moved aside first and deleted only after."""
    old = out.with_name(f".{out.name}.{secrets.token_hex(6)}.old") if out.exists() else None
    if old is not None:
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_bundle(ckpt: str | Path, out: str | Path, *, report: str | Path | None = None, merge_lora: bool = False,
                  force: bool = False, overrides: list[str] | None = None) -> Path:
    """Write the bundle of checkpoint `ckpt` to folder `out`; returns `out`. `overrides` ("KEY=VALUE",
    as `--set` takes them) change the checkpoint's stored config first (restore_model).

    Raises MacasrError (or its CheckpointError) in one line for a missing or unreadable checkpoint
    or report, an `--out` that is a file, not empty (without `force`) or holds an input, and
    `merge_lora` without LoRA on the LLM. Nothing is written then, and on any failure `out` is
    left as it was.
    """
    from macasr.infer.card import read_report
    from macasr.train.checkpoint import restore_model

    ckpt, out = Path(ckpt), Path(out)
    report_path = Path(report) if report is not None else None
    check_destination(out, [ckpt, *([report_path] if report_path else [])], force)
    report_data = read_report(report_path) if report_path else None
    restored = restore_model(ckpt, "cpu", "fp32", overrides)  # fp32: trained weights are written as they were trained
    cfg = restored.config
    if merge_lora and not cfg.model.llm.lora.enabled:
        raise MacasrError(f"--merge-lora: {ckpt} has no LoRA adapters on its LLM ([model.llm.lora] enabled = false); nothing to merge")
    local = [Path(getattr(cfg.model, p).path).expanduser() for p in PARTS]
    check_destination(out, [ckpt, *([report_path] if report_path else []), *local], force)
    tmp = _temporary_folder(out)
    try:
        with _quiet():
            write_bundle(tmp, restored, ckpt, report_data, report_path, merge_lora)
        found = pickles(tmp)
        if found:
            raise CheckpointError(f"export to {out} stopped: {found[0].relative_to(tmp)} would be a pickle file; a bundle holds safetensors only")
        _umask_modes(tmp)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
