"""Name → component registries, so a new part is one class, one decorator and one TOML line.

A registered component comes with its own frozen config dataclass. A TOML table such as
`[model.connector]` holds `name` plus that config's fields; `macasr.config` looks the name up
here and validates the table against the registered config type. A component without a table of
its own (a downsampler) is declared with the registry's base config and named by a string field,
`option(default, help, choices="DOWNSAMPLERS")`, which the parser checks against the registry.
"""

from __future__ import annotations

import dataclasses
import importlib
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
    """Components of one kind (encoder, connector, ...) keyed by the name used in TOML.

    Config types and component classes are kept apart so reading a config never imports torch:
    the built-in components' configs are `declare`d in a torch-free module, their classes are
    `register`ed where they are defined (`module`, imported on the first `component` call).
    """

    def __init__(self, kind: str, base_config: type[ComponentConfig], module: str | None = None) -> None:
        self.kind = kind
        self.base_config = base_config
        self.module = module  # where the declared components' classes are registered
        self._configs: dict[str, type[ComponentConfig]] = {}
        self._components: dict[str, type[T]] = {}

    def declare(self, name: str, config_cls: type[ComponentConfig] | None = None) -> None:
        """Name a component and its config type (default: the registry's base config, for
        components configured elsewhere, as downsamplers are) before its class is imported."""
        config_cls = config_cls or self.base_config
        if not issubclass(config_cls, self.base_config):
            raise TypeError(f"{config_cls.__name__} must subclass {self.base_config.__name__}")
        if self._configs.get(name, config_cls) is not config_cls:
            raise ValueError(f"{self.kind} {name!r} is already declared with {self._configs[name].__name__}")
        self._configs[name] = config_cls

    def register(self, name: str, config_cls: type[ComponentConfig] | None = None) -> Callable[[type[T]], type[T]]:
        """Class decorator: `@CONNECTORS.register("mlp", MLPConnectorConfig)`, `@DOWNSAMPLERS.register("pool")`."""
        self.declare(name, config_cls)

        def decorate(cls: type[T]) -> type[T]:
            if name in self._components:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._components[name] = cls
            return cls

        return decorate

    def names(self) -> list[str]:
        return sorted(self._configs)

    def unknown(self, name: object) -> str:
        """The message for a name nothing registered: `unknown connector 'x'; choose one of: ...`."""
        return f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"

    def _check(self, name: str) -> None:
        if name not in self._configs:
            raise KeyError(self.unknown(name))

    def component(self, name: str) -> type[T]:
        self._check(name)
        if name not in self._components and self.module is not None:
            importlib.import_module(self.module)  # registers the built-in classes
        if name not in self._components:
            raise KeyError(f"{self.kind} {name!r} has a config but no registered class (import the module that registers it)")
        return self._components[name]

    def config_type(self, name: str) -> type[ComponentConfig]:
        self._check(name)
        return self._configs[name]

    def build(self, config: ComponentConfig, *args: Any, **kwargs: Any) -> T:
        """Instantiate the component registered under `config.name`."""
        return self.component(config.name)(config, *args, **kwargs)
