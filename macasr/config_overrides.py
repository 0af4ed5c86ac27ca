"""`--set KEY=VALUE`: config keys from the command line, validated like the file.

KEY is dotted (`train.lr`, `model.connector.name`, `datasets.dev.manifest`); VALUE is read as a
TOML value (`3e-4`, `true`, `["a", "b"]`, `"text"`), and a bare word that is not TOML is a string
(`qformer`, `/models/llm`). The overrides go into the raw TOML dict before it is validated, so a
bad key or value gets the parser's own message (did-you-mean included), prefixed with the flag
that caused it: `--set train.lr=abc: ...`. Later flags win over earlier ones.

Setting a component's `name` to another component (`--set model.connector.name=qformer`) drops the
keys of that table the new component does not have (the old one's `hidden_dim`, say), so a file
written for one connector can try another.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import re
import tomllib
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from macasr import plugins
from macasr.config import _REGISTRIES, Config
from macasr.config_parse import _config_error, _Errors, _line_of, _migrate, _parse_table, _parse_toml, _read
from macasr.errors import ConfigError, MacasrError
from macasr.registry import Registry

FLAG = "--set"
_KEY = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_TOML_START = tuple("[{\"'")  # a value starting so was meant as TOML: never read as a bare word
_PATH_KEY = re.compile(r"^\[(model\.(?:llm|encoder))\] path: ")


class OverrideError(ConfigError):
    """A config problem that a `--set` caused (the message names the flag)."""


@dataclasses.dataclass(frozen=True)
class Override:
    text: str  # as given: "train.lr=3e-4"
    key: str  # "train.lr"
    value: Any  # the parsed TOML value

    @property
    def label(self) -> str:
        return f"{FLAG} {self.text}"


def parse_value(raw: str) -> Any:
    """A TOML value; a bare word that is not TOML (and no date: no key holds one) is that string.

    Raises ConfigError for text that starts like a TOML list, table or quoted string but is not
    one: read as a word, `[a, b` would silently become a one-item list."""
    raw = raw.strip()
    try:
        parsed = tomllib.loads(f"value = {raw}")
    except tomllib.TOMLDecodeError as e:
        if raw.startswith(_TOML_START):
            raise ConfigError(f"{raw!r} is not a TOML value ({str(e).split(' (at')[0]}); quote strings inside "
                              "lists: [\"a\", \"b\"]") from None
        return raw
    value = parsed.get("value")
    if set(parsed) != {"value"} or isinstance(value, (datetime.date, datetime.time)):
        return raw
    return value


def parse_override(text: str) -> Override:
    """`KEY=VALUE` → Override; ConfigError naming the flag for a missing `=`, a bad key or value."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"{FLAG} {text}: expected KEY=VALUE with a dotted KEY, e.g. {FLAG} train.lr=3e-4")
    if not _KEY.fullmatch(key):
        raise ConfigError(f"{FLAG} {text}: {key!r} is not a dotted key (names of letters, digits, _ and - joined by dots)")
    try:
        return Override(text, key, parse_value(raw))
    except ConfigError as e:
        raise ConfigError(f"{FLAG} {text}: {e}") from None


def parse_overrides(texts: Iterable[str] | None) -> list[Override]:
    return [parse_override(t) for t in texts or []]


def _component_tables(cls: type, prefix: str = "") -> dict[str, Registry[Any]]:
    """{"model.encoder": ENCODERS, "model.connector": CONNECTORS}: the tables chosen by `name`."""
    found: dict[str, Registry[Any]] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if f.metadata.get("registry"):
            found[key] = _REGISTRIES[f.metadata["registry"]]
        elif isinstance(hints[f.name], type) and dataclasses.is_dataclass(hints[f.name]):
            found |= _component_tables(hints[f.name], key + ".")
    return found


def _switch_component(table: dict[str, Any], registry: Registry[Any], name: Any) -> None:
    """Keep only the keys component `name` has (an unknown name is left for the parser to name)."""
    if name == table.get("name") or name not in registry.names():
        return
    fields = {f.name for f in dataclasses.fields(registry.config_type(name))}
    for key in [k for k in table if k not in fields]:
        del table[key]


def apply_overrides(data: dict[str, Any], overrides: Sequence[Override]) -> dict[str, Any]:
    """A copy of the raw config dict `data` with each override set in turn (tables made as needed).

    Raises ConfigError when a key goes through a value that is not a table (`train.lr.x`)."""
    result = copy.deepcopy(data)
    components = _component_tables(Config)
    for o in overrides:
        *heads, last = o.key.split(".")
        table = result
        for depth, head in enumerate(heads):
            if head not in table:
                table[head] = {}
            if not isinstance(table[head], dict):
                above = ".".join(heads[: depth + 1])
                raise ConfigError(f"{o.label}: `{above}` is a value ({table[head]!r}), not a table")
            table = table[head]
        if last == "name" and (registry := components.get(".".join(heads))):
            _switch_component(table, registry, o.value)
        table[last] = copy.deepcopy(o.value)
    return result


def _blame(key: str, overrides: Sequence[Override], text: str | None) -> Override | None:
    """The override that caused a problem at dotted `key`: the last one setting `key` or a table
    above it; else, for a key the file does not hold (an unknown key a flag made), the last one
    setting a key below it. None: the file's (or stored config's) own problem."""
    for o in reversed(overrides):
        if key == o.key or key.startswith(o.key + "."):
            return o
    if key and not (text and _line_of(text, key)):
        return next((o for o in reversed(overrides) if o.key.startswith(key + ".")), None)
    return None


def _hint(o: Override, message: str) -> str:
    """A number given for a string key: say how to quote it."""
    if "expected a string" in message and not isinstance(o.value, str):
        return f"{message} (quote it for a string: {FLAG} '{o.key}=\"{o.text.partition('=')[2].strip()}\"')"
    return message


def located_problems(errors: _Errors, overrides: Sequence[Override], source: str | None, text: str | None) -> list[str]:
    """Each problem as one line: `FILE:LINE: message` (or `FILE: message`) for the file's own,
    in file order, then `--set KEY=VALUE: message` for those a flag caused, in flag order."""
    own, by_flag = _Errors(), []
    for key, message in errors.items:
        o = _blame(key, overrides, text)
        if o is None:
            own.add(key, message)
        else:
            by_flag.append((overrides.index(o), f"{o.label}: {_hint(o, message)}"))
    lines = _config_error(own, source, text).problems if own.items else []
    return lines + [line for _, line in sorted(by_flag, key=lambda item: item[0])]


def from_dict(data: dict[str, Any], overrides: Sequence[Override], source: str | None = None,
              text: str | None = None) -> Config:
    """`config_parse.from_dict` of `data` with `overrides` set: OverrideError when a flag caused any
    problem (every problem listed), ConfigError when only the file's own are left."""
    errors = _Errors()
    data = plugins.prepare(apply_overrides(data, overrides), source)
    cfg = _parse_table(Config, _migrate(data, errors), "", errors, None)
    if errors.items:
        lines = located_problems(errors, overrides, source, text)
        raise (OverrideError if any(line.startswith(FLAG + " ") for line in lines) else ConfigError)(lines)
    return cfg


def load(path: str | Path, sets: Iterable[str] | None = None) -> Config:
    """`config.load(path)` with `--set` flags applied (the same call without any)."""
    overrides = parse_overrides(sets)
    path = Path(path)
    text = _read(path)
    return from_dict(_parse_toml(text, str(path)), overrides, str(path), text)


def override(cfg: Config, sets: Iterable[str] | None, source: str = "config") -> Config:
    """A loaded config with `--set` flags applied, re-validated; `cfg` itself without any."""
    from macasr.config_render import to_dict

    overrides = parse_overrides(sets)
    return from_dict(to_dict(cfg), overrides, source) if overrides else cfg


def moved_model_hint(error: MacasrError, ckpt: str | Path) -> MacasrError:
    """A model folder a checkpoint's stored config names cannot be loaded: say so, and how to
    give its new place (the stored path itself cannot be edited). Other errors are returned as they are."""
    found = _PATH_KEY.match(str(error))
    if not found:
        return error
    return type(error)(f"{ckpt}: its stored config's {error}; if the model moved, give its folder with "
                       f"{FLAG} {found.group(1)}.path=FOLDER")
