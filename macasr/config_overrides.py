"""`--set KEY=VALUE`: config keys from the command line, validated like the file.

KEY is dotted (`train.lr`, `model.connector.name`, `datasets.dev.manifest`); VALUE is read as a
TOML value (`3e-4`, `true`, `["a", "b"]`, `"text"`), and a bare word that is not TOML is a string
(`qformer`, `/models/llm`). The overrides go into the raw TOML dict before it is validated, so a
bad key or value gets the parser's own message (did-you-mean included), prefixed with the flag
that caused it: `--set train.lr=abc: ...`. Later flags win over earlier ones.

Setting a component's `name` to another component (`--set model.connector.name=qformer`) drops the
keys of that table the new component does not have (the old one's `hidden_dim`, say), so a file
written for one connector can try another; a plugin's component too (its modules are imported first).

On a checkpoint (eval, transcribe, export, inspect) the flags change its stored config:
`checkpoint_overrides` refuses keys the command does not use and warns about those that change
the model it was trained as; errors a flag causes there (an invalid config, weights that do not
fit, a model folder that does not load) name the flag, not the stored config.
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


def apply_overrides(data: dict[str, Any], overrides: Sequence[Override], switch: bool = True) -> dict[str, Any]:
    """A copy of the raw config dict `data` with each override set in turn (tables made as needed);
    `switch`: a new component `name` drops the keys it lacks (its registry must know the name by then).

    Raises ConfigError when a key goes through a value that is not a table (`train.lr.x`)."""
    result = copy.deepcopy(data)
    components = _component_tables(Config) if switch else {}
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


def _names(o: Override, message: str) -> bool:
    """True when `message` names the key `o` sets: dotted (`train.max_steps`), as `[train] max_steps`,
    or, for a rule of the same table (`[train] warmup_steps: ... max_steps (-5)`), by its name alone."""
    table, _, name = o.key.rpartition(".")
    if o.key in message or f"[{table}] {name}" in message:
        return True
    own = re.match(r"\[([\w.]+)\] ", message)
    return bool(own and own.group(1) == table and re.search(rf"\b{re.escape(name)}\b", message[own.end():]))


def _blame(key: str, overrides: Sequence[Override], text: str | None, message: str = "") -> Override | None:
    """The override that caused a problem at dotted `key`: the last one setting `key` or a table
    above it; else, for a key the file does not hold (an unknown key a flag made), the last one
    setting a key below it; else the last one whose key the message names (a rule across keys:
    `warmup_steps` must stay below a `max_steps` a flag set). None: the file's (or stored config's) own problem."""
    for o in reversed(overrides):
        if key == o.key or key.startswith(o.key + "."):
            return o
    if key and not (text and _line_of(text, key)):
        below = next((o for o in reversed(overrides) if o.key.startswith(key + ".")), None)
        if below is not None:
            return below
    return next((o for o in reversed(overrides) if _names(o, message)), None)


def _hint(o: Override, message: str) -> str:
    """A number given for a string key: say how to quote it."""
    if "expected a string" in message and not isinstance(o.value, str):
        return f"{message} (quote it for a string: {FLAG} '{o.key}=\"{o.text.partition('=')[2].strip()}\"')"
    return message


def prepared(data: dict[str, Any], overrides: Sequence[Override], source: str | None) -> dict[str, Any]:
    """`data` with `overrides` set and its plugins imported (`plugins.prepare`). The plugins the
    result names (from the file or a `--set plugins.modules=...`) are imported before component
    names are switched, so switching to a plugin's connector drops the keys it lacks, as for a
    built-in one. Raises PluginError for a plugin that cannot be imported."""
    if any(o.key.endswith(".name") for o in overrides):
        plugins.prepare(apply_overrides(data, overrides, switch=False), source)
    return plugins.prepare(apply_overrides(data, overrides), source)


def located_problems(errors: _Errors, overrides: Sequence[Override], source: str | None, text: str | None) -> list[str]:
    """Each problem as one line: `FILE:LINE: message` (or `FILE: message`) for the file's own,
    in file order, then `--set KEY=VALUE: message` for those a flag caused, in flag order."""
    own, by_flag = _Errors(), []
    for key, message in errors.items:
        o = _blame(key, overrides, text, message)
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
    data = prepared(data, overrides, source)
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
    if not overrides:
        return cfg
    try:
        return from_dict(to_dict(cfg), overrides, source)
    except (OverrideError, plugins.PluginError):
        raise
    except ConfigError as e:  # `cfg` was valid: the flags made it invalid, in a way no key of theirs names
        raise invalid_by_flags(e, sets, source) from None


# ----------------------------------------------------------------------------- --set on a checkpoint

# Keys that say where the trained model's parts are (a folder or plugin file that moved): never a change of the model.
_WHERE = ("model.encoder.path", "model.llm.path", "plugins")
# Keys the model was trained with: a change is a legitimate experiment, but never a silent one.
_TRAINED = ("model", "prompt")
# Keys each checkpoint command uses besides those: how it decodes, scores and computes.
# export: the bundle's config holds them, as the defaults of every command that loads the bundle.
_APPLIES = {
    "eval": ("eval", "datasets", "data.on_bad_clip", "data.allow_commands", "train.precision", "train.prefix_cache",
             "train.distributed_timeout_s"),
    "transcribe": ("eval", "data.allow_commands", "train.precision", "train.prefix_cache"),
    "export": ("eval", "data.allow_commands", "train.precision", "train.prefix_cache"),
    "inspect": ("data.allow_commands", "train.precision"),
}


def _under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def moves(o: Override) -> bool:
    """True for a flag that only says where a part of the model is (a model folder, a plugin)."""
    return _under(o.key, _WHERE)


def checkpoint_overrides(sets: Iterable[str] | None, command: str) -> list[str]:
    """Check the `--set` flags of a checkpoint command (eval, transcribe, export, inspect); return
    the warnings to show: one naming the flags that change the model or prompt it was trained with.

    Raises OverrideError, in one line naming them, for flags that have no effect on `command`
    (`--set train.lr=1e-3: has no effect on eval`): accepted and ignored, they would look applied."""
    overrides = parse_overrides(sets)
    idle = [o for o in overrides if not moves(o) and not _under(o.key, _TRAINED) and not _under(o.key, _APPLIES[command])]
    if idle:
        raise OverrideError(f"{', '.join(o.label for o in idle)}: {'has' if len(idle) == 1 else 'have'} no effect on {command}"
                            f" (of a checkpoint's config it reads [model], [prompt], [plugins] and {', '.join(_APPLIES[command])})")
    trained = [o.key for o in overrides if not moves(o) and _under(o.key, _TRAINED)]
    return [f"{FLAG} changes how the model was trained: {', '.join(trained)}"] if trained else []


def model_flags(sets: Iterable[str] | None) -> list[Override]:
    """The flags that change the model built from a stored config (its [model] keys, paths included)."""
    return [o for o in parse_overrides(sets) if _under(o.key, ("model",))]


def built_from(stored: str, sets: Iterable[str] | None, question: str = "") -> str:
    """What a model was built from, for a weight that does not fit: `stored` ("its stored config")
    and the flags that changed its [model] keys; without any, `stored` and `question` (a likely cause)."""
    flags = model_flags(sets)
    if not flags:
        return f"{stored} {question}".rstrip()
    labels = " ".join(o.label for o in flags)
    if all(moves(o) for o in flags):
        return f"{stored} with {labels} (does that folder hold the model it was trained with?)"
    return f"{stored} as changed by {labels}"


def invalid_by_flags(error: ConfigError, sets: Iterable[str] | None, stored: str) -> OverrideError:
    """A stored config that is valid alone but not with the flags: the flags are the cause."""
    overrides = parse_overrides(sets)
    verb = "makes" if len(overrides) == 1 else "make"
    return OverrideError(f"{' '.join(o.label for o in overrides)}: {verb} {stored} invalid ({str(error).splitlines()[0]})")


def moved_model_hint(errors: Sequence[MacasrError], whose: str, sets: Iterable[str] | None = None) -> MacasrError:
    """Model folders a checkpoint's stored config names (`whose`: "best.pt: its stored config's")
    cannot be loaded: one line naming every one, and how to give their new places (a stored path
    cannot be edited); a folder a `--set` gave is named by its flag, with no advice to give it
    again. A single error that is not about a model folder is returned as it is."""
    given = {o.key: o for o in parse_overrides(sets) if moves(o)}
    stored, flagged = [], []
    for error in errors:
        found = _PATH_KEY.match(str(error))
        if not found:
            return error
        o = given.get(f"{found.group(1)}.path")
        if o is not None:
            flagged.append(f"{o.label}: {str(error)[found.end():]}")
        else:
            stored.append((found.group(1), str(error)))
    parts = []
    if stored:
        flags = " ".join(f"{FLAG} {key}.path=FOLDER" for key, _ in stored)
        models = "the model moved, give its folder" if len(stored) == 1 else "the models moved, give their folders"
        parts.append(f"{whose} {'; '.join(e for _, e in stored)}; if {models} with {flags}")
    return type(errors[0])("; ".join(flagged + parts))
