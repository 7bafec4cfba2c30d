"""Name -> component registries, so configs name models, losses and methods by string (pykeen style)."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from distkg.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Components of one kind by name; ``create`` checks config arguments against the signature."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(obj: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return deco

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._items:
            close = difflib.get_close_matches(name, self.names(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown {self.kind} {name!r}{hint}; known: {', '.join(self.names())}")
        return self._items[name]

    def check(self, name: str, config_args: dict[str, Any], where: str, runtime: tuple[str, ...] = ("dataset",)) -> None:
        """Reject config arguments the component does not take, before any expensive work starts."""
        params = inspect.signature(self.get(name)).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return
        allowed = [p for p in params if p not in runtime]
        for key in config_args:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{where}: {self.kind} {name!r} has no argument {key!r}{hint}; it takes: {', '.join(allowed)}")

    def create(self, name: str, config_args: dict[str, Any], where: str, **runtime: Any) -> T:
        """Build ``name`` from config arguments (checked by name) plus runtime arguments (the dataset...)."""
        obj = self.get(name)
        self.check(name, config_args, where, tuple(runtime))
        try:
            return obj(**config_args, **runtime)
        except ValueError as e:  # a constructor's range check, e.g. an odd dim for a complex model
            raise ConfigError(f"{where}: {self.kind} {name!r}: {e}") from None
