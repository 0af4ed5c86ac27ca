"""Name → component registries, so a new part is one class, one decorator and one TOML line.

A registered component comes with its own frozen config dataclass. A TOML table such as
`[model.connector]` holds `name` plus that config's fields; `macasr.config` looks the name up
here and validates the table against the registered config type.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with the help text that feeds `config init` comments and docs."""
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata={"help": help, **kwargs})
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


@dataclasses.dataclass(frozen=True)
class ComponentConfig:
    """Base of every registry-selected component config; `name` picks the component."""

    name: str = option("", "Which component to use.")

    def validate(self) -> list[str]:
        """Cross-field problems, one message each (empty when valid)."""
        return []


class Registry(Generic[T]):
    """Components of one kind (encoder, connector, ...) keyed by the name used in TOML."""

    def __init__(self, kind: str, base_config: type[ComponentConfig]) -> None:
        self.kind = kind
        self.base_config = base_config
        self._entries: dict[str, tuple[type[T], type[ComponentConfig]]] = {}

    def register(self, name: str, config_cls: type[ComponentConfig]) -> Callable[[type[T]], type[T]]:
        """Class decorator: `@CONNECTORS.register("mlp", MLPConnectorConfig)`."""
        if not issubclass(config_cls, self.base_config):
            raise TypeError(f"{config_cls.__name__} must subclass {self.base_config.__name__}")

        def decorate(cls: type[T]) -> type[T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = (cls, config_cls)
            return cls

        return decorate

    def names(self) -> list[str]:
        return sorted(self._entries)

    def _entry(self, name: str) -> tuple[type[T], type[ComponentConfig]]:
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")
        return self._entries[name]

    def component(self, name: str) -> type[T]:
        return self._entry(name)[0]

    def config_type(self, name: str) -> type[ComponentConfig]:
        return self._entry(name)[1]

    def build(self, config: ComponentConfig, *args: Any, **kwargs: Any) -> T:
        """Instantiate the component registered under `config.name`."""
        return self.component(config.name)(config, *args, **kwargs)
