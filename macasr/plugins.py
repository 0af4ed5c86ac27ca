"""Your own components: modules that register encoders, connectors and downsamplers, imported before a config is read.

Two ways in, both imported before the parser checks component names against the registries:
- `[plugins] modules = ["my_connectors", "path/to/file.py"]` in a config: a module name is
  imported as usual (from sys.path, which holds the current folder for `python -m macasr`); an
  entry ending in `.py` or holding a `/` is a file, read relative to the config file's folder
  (the current folder for a config not read from a file). The parser stores files as absolute
  paths, so a run's config.toml and its checkpoints find them again from any folder.
- the `macasr.plugins` entry-point group of installed packages, each entry point a module,
  imported once per process (`[project.entry-points."macasr.plugins"] mine = "my_pkg.connectors"`).

A plugin that cannot be imported stops the load with one line naming it (`PluginError`): a
checkpoint's stored config holds its `[plugins]`, so a missing plugin is named, not reported
as an unknown connector. Each module or file is imported once per process (importing it again
would register its components twice). See docs/extending.md.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from macasr.errors import ConfigError

ENTRY_POINT_GROUP = "macasr.plugins"
_files: dict[Path, ModuleType] = {}  # resolved .py path → its module, imported once
_contents: dict[str, ModuleType] = {}  # sha256 of a file's bytes → its module (copies are one module)
_entry_points_done = False


class PluginError(ConfigError):
    """A plugin module cannot be imported (missing, or it raised); the message names it."""


def is_file_entry(entry: str) -> bool:
    """`x.py` or `dir/x` is a file; `my_pkg.connectors` is a module name."""
    return entry.endswith(".py") or "/" in entry or "\\" in entry


def resolve_entry(entry: str, base: Path) -> str:
    """A file entry as an absolute path (relative ones read from `base`); a module name as it is."""
    return str((base / Path(entry).expanduser()).resolve()) if is_file_entry(entry) else entry


def _import_file(path: Path) -> ModuleType:
    """Import a .py file as module `macasr_plugin_STEM` (registered in sys.modules first, as
    dataclasses need); a second call for the same file, or for a file with the same bytes (an
    exported bundle's copy of a plugin already imported), returns the first import."""
    if path in _files:
        return _files[path]
    if not path.is_file():
        raise FileNotFoundError(f"no such file {str(path)!r}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest in _contents:
        _files[path] = _contents[digest]
        return _files[path]
    name = "macasr_plugin_" + re.sub(r"\W", "_", path.stem)
    if name in sys.modules:  # another file with the same stem
        name = f"{name}_{len(_files)}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    _files[path] = _contents[digest] = module
    return module


def _module_files(target: str) -> Path | None:
    """The file of the top-level module of `target`, or the folder of its package (all its
    modules' frames count as the plugin's); found without importing anything. None: not found."""
    try:
        spec = importlib.util.find_spec(target.split(".")[0])
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        return None
    return Path(spec.origin).parent if spec.submodule_search_locations else Path(spec.origin)


def _raised_at(e: BaseException, where: Path | None) -> str | None:
    """"FILE:LINE" of the traceback's last frame inside `where` (the plugin file, or a package's
    folder): the plugin's own line that raised, not the library frame below it; None when none."""
    if where is None:
        return None
    where = where.resolve()
    found = None
    tb = e.__traceback__
    while tb is not None:
        file = Path(tb.tb_frame.f_code.co_filename)
        if file.is_absolute() and (file.resolve() == where or where in file.resolve().parents):
            found = f"{file}:{tb.tb_lineno}"
        tb = tb.tb_next
    return found


def _reason(e: BaseException, where: Path | None = None) -> str:
    """What went wrong, one line: a missing module or file as Python says it; an exception the
    plugin raised with its type and the plugin's file and line it came from (when known)."""
    if isinstance(e, (ModuleNotFoundError, FileNotFoundError)):
        return str(e)
    at = _raised_at(e, where)
    return f"{type(e).__name__}: {e}" + (f" (raised at {at})" if at else "")


def import_plugins(modules: Sequence[str], base: Path | None = None, source: str | None = None) -> list[str]:
    """Import each module name or .py file (relative to `base`, default the current folder) and
    return the entries with files made absolute. Raises PluginError naming the first one that
    cannot be imported, prefixed with `source` (the config) when given."""
    base = base or Path.cwd()
    resolved = []
    for entry in modules:
        target = resolve_entry(entry, base)
        try:
            _import_file(Path(target)) if is_file_entry(entry) else importlib.import_module(target)
        except Exception as e:
            where = f" (read from {base})" if is_file_entry(entry) and not Path(entry).is_absolute() else ""
            origin = Path(target) if is_file_entry(entry) else _module_files(target)
            raise PluginError(f"plugin module {entry} (from [plugins] modules){where} cannot be imported: {_reason(e, origin)}",
                              source) from None
        resolved.append(target)
    return resolved


def import_entry_points() -> None:
    """Import every module of the `macasr.plugins` entry-point group, once per process."""
    global _entry_points_done
    if _entry_points_done:
        return
    _entry_points_done = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:
            _entry_points_done = False  # fail again next time, rather than silently lacking it
            raise PluginError(f"plugin {ep.name} = {ep.value!r} (entry point group {ENTRY_POINT_GROUP}) "
                              f"cannot be imported: {_reason(e, _module_files(ep.module))}") from None


def _base_of(source: str | None) -> Path:
    """The folder of the config file `source` names; the current folder for any other source."""
    return Path(source).resolve().parent if source and Path(source).is_file() else Path.cwd()


def prepare(data: dict[str, Any], source: str | None = None) -> dict[str, Any]:
    """Before a raw config dict is validated: import the entry-point plugins and the config's
    `[plugins] modules`; return `data` with file entries made absolute. A malformed [plugins]
    table is left as it is, for the parser to report."""
    import_entry_points()
    table = data.get("plugins")
    modules = table.get("modules") if isinstance(table, dict) else None
    modules = [modules] if isinstance(modules, str) else modules
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules) or not modules:
        return data
    resolved = import_plugins(modules, _base_of(source), source)
    return {**data, "plugins": {**table, "modules": resolved}}
