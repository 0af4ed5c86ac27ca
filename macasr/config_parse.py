"""Parsing a config: TOML text → validated `Config`, every problem at once.

`load` / `loads` / `from_dict` gather *every* problem (unknown keys with a did-you-mean, wrong
types, value and cross-field rules, keys set twice) into one `ConfigError`, one line each, with
the file and line, in file order. Reachable as `macasr.config.load` etc.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
import typing
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from macasr.config import _REGISTRIES, DATASET_NAME, Config
from macasr import plugins
from macasr.errors import ConfigError, DeprecatedSetting
from macasr.registry import Registry

# ----------------------------------------------------------------------------- parsing


class _Errors:
    """Collects problems; each knows its dotted key so the file line can be found."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []  # (dotted key, message)

    def add(self, key: str, message: str) -> None:
        self.items.append((key, message))


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _convert(tp: Any, value: Any, key: str, errors: _Errors, registry: str | None = None, choices: str | None = None) -> Any:
    """Check `value` against annotation `tp` (and, for `choices`, the names in that registry);
    return the converted value or None on error."""
    origin = typing.get_origin(tp)
    if choices is not None:
        if isinstance(value, str) and value in _REGISTRIES[choices].names():
            return value
        errors.add(key, f"`{key}`: {_REGISTRIES[choices].unknown(value)}")
        return None
    if registry is not None or (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
        return _parse_table(tp, value, key, errors, _REGISTRIES.get(registry or ""))
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        errors.add(key, f"`{key}`: expected one of {', '.join(map(repr, choices))}, got {_describe(value)}")
        return None
    if origin is list and typing.get_args(tp) == (float,):
        if isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return [float(v) for v in value]
        errors.add(key, f"`{key}`: expected a list of numbers, got {_describe(value)}")
        return None
    if origin in (list, tuple):
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list) and all(isinstance(v, str) for v in items):
            return list(items)
        errors.add(key, f"`{key}`: expected a list of strings, got {_describe(value)}")
        return None
    if origin is dict and dataclasses.is_dataclass(item := typing.get_args(tp)[1]):
        if not isinstance(value, dict):
            errors.add(key, f"`{key}`: expected [{key}.NAME] tables, got {_describe(value)}")
            return None
        parsed = {}
        for name, table in value.items():
            if not DATASET_NAME.fullmatch(name):
                errors.add(_join(key, name), f"[{key}.{name}]: a name may use only letters, digits, _ and -")
            parsed[name] = _parse_table(item, table, _join(key, name), errors, None)
        return parsed if all(v is not None for v in parsed.values()) else None
    if origin is dict:
        if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
            return dict(value)
        errors.add(key, f"`{key}`: expected a table of name = \"string\" entries, got {_describe(value)}")
        return None
    expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[tp]
    ok = isinstance(value, tp) and not (tp is not bool and isinstance(value, bool))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if ok:
        return value
    errors.add(key, f"`{key}`: expected {expected}, got {_describe(value)}")
    return None


def _parse_table(cls: type, data: Any, key: str, errors: _Errors, registry: Registry[Any] | None) -> Any:
    if not isinstance(data, dict):
        errors.add(key, f"[{key}]: expected a table, got {_describe(data)}")
        return None
    if registry is not None:
        name = data.get("name")
        if name not in registry.names():
            errors.add(_join(key, "name"), f"`{_join(key, 'name')}`: {registry.unknown(name)}")
            return None
        cls = registry.config_type(name)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for unknown in sorted(set(data) - set(fields)):
        close = difflib.get_close_matches(unknown, fields, n=1)
        hint = f"; did you mean `{close[0]}`?" if close else f"; valid keys: {', '.join(fields)}"
        errors.add(_join(key, unknown), f"unknown key `{unknown}` in {f'[{key}]' if key else 'the top level'}{hint}")
    kwargs, broken = {}, []
    for name, f in fields.items():
        if name in data:
            value = _convert(hints[name], data[name], _join(key, name), errors, f.metadata.get("registry"), f.metadata.get("choices"))
            if value is None:
                broken.append(name)
            else:
                kwargs[name] = value
    # Value rules run on the fields that parsed (broken ones at their defaults), so one run reports
    # every problem; a rule that mentions a broken field would judge its default, so it is dropped.
    obj = cls(**kwargs)
    for problem in getattr(obj, "validate", lambda: [])():
        if any(re.search(rf"\b{re.escape(name)}\b", re.sub(r"^\[[\w.]+\] ", "", problem)) for name in broken):
            continue
        problem = problem if problem.startswith("[") else f"[{key}] {problem}"  # shared types name no table
        named = re.match(r"\[([\w.]+)\] (\w+):", problem)  # "[train] lr: ..." points at train.lr's line
        errors.add(f"{named.group(1)}.{named.group(2)}" if named else key, problem)
    return obj


_HEADER = re.compile(r"\s*\[\[?([^\[\]]+)\]\]?\s*(#.*)?$")
_ASSIGNMENT = re.compile(r"\s*([^=#\[\]\s][^=#\[\]]*?)\s*=")


def _normalize_key(key: str) -> str:
    """`"eval" . datasets` → eval.datasets (quotes and spaces around dots dropped)."""
    return ".".join(part.strip().strip("\"'") for part in key.split("."))


def _keys(text: str) -> Iterator[tuple[int, str, str]]:
    """(line number, "table" or "key", dotted name) of each `[table]` and `key = value` line.

    Best effort for error messages: a line inside a multi-line string may be misread."""
    table = ""
    for number, line in enumerate(text.splitlines(), start=1):
        if header := _HEADER.match(line):
            table = _normalize_key(header.group(1))
            yield number, "table", table
        elif assignment := _ASSIGNMENT.match(line):
            yield number, "key", _join(table, _normalize_key(assignment.group(1)))


def _line_of(text: str, dotted: str) -> int | None:
    """Best-effort line number of `dotted` (e.g. train.lr) in TOML text, for error messages."""
    return next((number for number, _, name in _keys(text) if name == dotted), None)


def _key_line(text: str, key: str) -> int | None:
    """The line of `key`, else of its table (a `datasets = { ... }` inline table holds its keys)."""
    return _line_of(text, key) or (_line_of(text, key.rpartition(".")[0]) if "." in key else None)


def _config_error(errors: _Errors, source: str | None, text: str | None) -> ConfigError:
    """One ConfigError line per problem, in file order: `FILE:LINE: message` where the key's line
    is found, `FILE: message` (after those) where it is not."""
    where = source or "config"
    located = [(_key_line(text, key) if text else None, message) for key, message in errors.items]
    located.sort(key=lambda item: item[0] or float("inf"))
    return ConfigError([f"{where}:{line}: {message}" if line else f"{where}: {message}" for line, message in located])


def _migrate(data: dict[str, Any], errors: _Errors) -> dict[str, Any]:
    """The old `[eval] datasets = {name = "path"}` table (before 0.3) → `[datasets.name]` tables
    listed in `[eval] test_sets`, with a FutureWarning saying what to write instead."""
    old = data.get("eval", {}).get("datasets") if isinstance(data.get("eval"), dict) else None
    if not isinstance(old, dict):
        return data
    data = {**data, "eval": {k: v for k, v in data["eval"].items() if k != "datasets"}}
    datasets = dict(data.get("datasets", {})) if isinstance(data.get("datasets"), dict) else {}
    for name, path in old.items():
        if name in datasets:
            errors.add(f"eval.datasets.{name}", f"[eval] datasets.{name}: also defined as [datasets.{name}]; "
                                                "keep the [datasets.*] table and list its name in [eval] test_sets")
            continue
        datasets[name] = {"manifest": path}
    data["datasets"] = datasets
    data["eval"].setdefault("test_sets", list(old))
    tables = " ".join(f'[datasets.{name}] manifest = "{path}";' for name, path in old.items())
    names = ", ".join(f'"{name}"' for name in old)
    warnings.warn(f"[eval] datasets is deprecated: write {tables} and [eval] test_sets = [{names}]",
                  DeprecatedSetting, stacklevel=3)
    return data


def from_dict(data: dict[str, Any], source: str | None = None, text: str | None = None) -> Config:
    """Validate a raw TOML dict; raise one `ConfigError` listing every problem."""
    errors = _Errors()
    cfg = _parse_table(Config, _migrate(plugins.prepare(data, source), errors), "", errors, None)
    if errors.items:
        raise _config_error(errors, source, text)
    return cfg


_TOML_POSITION = re.compile(r"\(at line (\d+), column \d+\)$")


def _duplicate_message(message: str, text: str) -> str | None:
    """tomllib's "Cannot overwrite a value (at line N, ...)" names no key: find it on line N.

    Returns "N: duplicate key `train.lr` (first set on line M); ..." or None when line N holds no
    `key = value` or `[table]` (the caller then keeps tomllib's own message).
    """
    position = _TOML_POSITION.search(message)
    if not position or not message.startswith(("Cannot overwrite a value", "Cannot declare")):
        return None
    number = int(position.group(1))
    found = next(((kind, name) for n, kind, name in _keys(text) if n == number), None)
    if found is None:
        return None
    kind, dotted = found
    first = _line_of("\n".join(text.splitlines()[: number - 1]), dotted)
    shown = f"[{dotted}]" if kind == "table" else dotted
    again = f" (first set on line {first})" if first else ""
    return f"{number}: duplicate {kind} `{shown}`{again}; a TOML file sets each key and table once"


def loads(text: str, source: str | None = None) -> Config:
    return from_dict(_parse_toml(text, source), source, text)


def _parse_toml(text: str, source: str | None) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        duplicate = _duplicate_message(str(e), text)
        if duplicate:
            raise ConfigError(f"{source or 'config'}:{duplicate}") from None
        raise ConfigError(f"TOML syntax error: {e}", source) from None


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config: {e.strerror or e}", str(path)) from None


def load(path: str | Path) -> Config:
    """Read and validate a TOML config file (paths it names are not checked: see `check`)."""
    path = Path(path)
    return loads(_read(path), str(path))


