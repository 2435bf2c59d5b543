"""A small name registry for model variants (timm-style ``create``/``list``)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from mvq.errors import UnknownNameError

T = TypeVar("T")


def closest_hint(name: str, choices: list[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""`` when none is close."""
    match = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


class Registry(Generic[T]):
    """Maps variant names to factory functions.

    Example:
        >>> MODELS = Registry("tokenizer")
        >>> @MODELS.register("tiny")
        ... def tiny(**overrides): ...
        >>> MODELS.create("tiny")
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering ``fn`` under ``name``; a duplicate name is an error."""

        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} '{name}' is registered twice; pick another name")
            self._factories[name] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered as ``name``; an unknown name is an ``UnknownNameError`` (a
        ``KeyError``) naming the closest valid one."""
        if name not in self._factories:
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'{closest_hint(name, self.names())}; "
                f"available: {', '.join(self.names())}"
            )
        return self._factories[name]

    def create(self, name: str, **overrides: Any) -> T:
        """Build the variant ``name``, passing ``overrides`` to its factory."""
        return self.get(name)(**overrides)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories
