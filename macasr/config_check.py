"""`macasr config check`: every schema problem of a config file, and every file it names that is
missing, in one report (`load` checks the schema only: each command needs only some files)."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

from macasr.config import Config, looks_like_path
from macasr.config_overrides import located_problems, parse_overrides, prepared
from macasr.config_parse import _Errors, _migrate, _parse_table, _parse_toml, _read


@dataclasses.dataclass(frozen=True)
class CheckReport:
    problems: list[str]  # one line each, `FILE:LINE: message`, in file order
    notes: list[str]  # the same form; worth knowing, not wrong: a model path that is a hub id


def check(path: str | Path, sets: list[str] | None = None) -> CheckReport:
    """What `macasr config check` reports: every schema problem and every file the config names
    that is missing, with notes, for the config with `sets` ("KEY=VALUE", from `--set`) applied;
    raises ConfigError only for an unreadable file, bad TOML or a malformed `--set`.

    Files are checked here and not in `load`, because each command needs only some of them
    (training needs no [eval] datasets, eval needs no training manifests).
    """
    path, overrides = Path(path), parse_overrides(sets)
    text = _read(path)
    errors, notes = _Errors(), _Errors()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = prepared(_parse_toml(text, str(path)), overrides, str(path))
        cfg = _parse_table(Config, _migrate(data, errors), "", errors, None)
    for warning in caught:
        notes.add("eval.datasets", str(warning.message))
    _check_files(cfg, errors, notes)
    located = [located_problems(found, overrides, str(path), text) for found in (errors, notes)]
    return CheckReport(*located)


def _check_files(cfg: Config, errors: _Errors, notes: _Errors) -> None:
    """Add a problem per missing manifest, local model folder or [train] init_from (named by its
    absolute path: relative paths are read from the current folder), a note per hub id (told apart
    from a path as loading does, by `model._hf.is_local_path`)."""
    from macasr.model._hf import is_local_path

    manifests = [(f"data.{split}", f"[data] {split}", p) for split in ("train", "valid")
                 for p in getattr(cfg.data, split) if p not in cfg.datasets and looks_like_path(p)]
    manifests += [(f"datasets.{name}.manifest", f"[datasets.{name}] manifest", p)
                  for name, ds in cfg.datasets.items() for p in ds.manifest]
    for key, label, p in manifests:
        problem = _manifest_problem(p)
        if problem:
            errors.add(key, f"{label}: {problem}")
    for key in ("noise_manifest", "rir_manifest"):
        p = getattr(cfg.augment, key)
        if p and not Path(p).is_file():
            what = "is a folder; expected a manifest file" if Path(p).is_dir() else f"no such manifest{_relative_to_cwd(p)}"
            errors.add(f"augment.{key}", f"[augment] {key}: {p!r} {what}")
    if (init := cfg.train.init_from) and not Path(init).exists():
        errors.add("train.init_from", f"[train] init_from: no such checkpoint file or bundle folder {str(Path(init).resolve())!r}")
    for table, part in (("model.encoder", cfg.model.encoder), ("model.llm", cfg.model.llm)):
        p = getattr(part, "path", "")
        if not p or Path(p).is_dir():
            continue
        if Path(p).exists():
            errors.add(f"{table}.path", f"[{table}] path: {p!r} is a file; expected a model folder or a Hugging Face id")
        elif not is_local_path(p):
            notes.add(f"{table}.path", f"[{table}] path: {p!r} is not a local folder{_relative_to_cwd(p)}; "
                                       "it will be loaded as a Hugging Face hub id (from the cache or the network)")
        else:
            errors.add(f"{table}.path", f"[{table}] path: no such model folder {p!r}{_relative_to_cwd(p)}")


def _relative_to_cwd(p: str) -> str:
    return "" if Path(p).is_absolute() else f" (relative paths are read from {Path.cwd()})"


def _manifest_problem(p: str) -> str | None:
    if Path(p).is_dir() and not any(Path(p).glob("cuts.*.jsonl*")):
        return f"{p!r} is a folder without Shar shards (cuts.000000.jsonl.gz ...); expected a manifest file or a Shar folder"
    if not Path(p).exists():
        return f"no such manifest {p!r}{_relative_to_cwd(p)}"
    return None
