"""A small name registry for model variants (timm-style ``create``/``list``).

Each name maps to an ``Entry``: the factory, the class it builds and that class's config class,
so callers ask the registry what a name builds instead of reading it from the name.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from mvq.core.errors import UnknownNameError

T = TypeVar("T")


def closest_hint(name: str, choices: list[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""`` when none is close."""
    match = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered variant.

    Attributes:
        name: the registered name, e.g. ``mvqvae_fmnist_s4_k16``.
        cls: the class the factory builds.
        config_class: ``cls.config_class``, the dataclass whose fields ``overrides`` may set.
        factory: ``factory(**overrides) -> cls``.
        doc: one line on what the variant is (the factory's docstring).
    """

    name: str
    cls: type[T]
    config_class: type
    factory: Callable[..., T]
    doc: str


class Registry(Generic[T]):
    """Maps variant names to entries (factory, class, config class).

    Example:
        >>> MODELS = Registry("tokenizer")
        >>> @MODELS.register("tiny", Tiny)
        ... def tiny(**overrides): ...
        >>> MODELS.create("tiny")
        >>> MODELS.entry("tiny").config_class
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, cls: type[T]) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering ``fn`` under ``name`` as the factory of ``cls`` (a class with a
        ``config_class``); a duplicate name is an error."""

        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice; pick another name")
            doc = (fn.__doc__ or "").strip().split("\n")[0]
            self._entries[name] = Entry(name, cls, cls.config_class, fn, doc)
            return fn

        return deco

    def entry(self, name: str) -> Entry[T]:
        """The entry registered as ``name``; an unknown name is an ``UnknownNameError`` (a
        ``KeyError``) naming the closest valid one."""
        if name not in self._entries:
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'{closest_hint(name, self.names())}; "
                f"available: {', '.join(self.names())}"
            )
        return self._entries[name]

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered as ``name`` (``entry(name).factory``)."""
        return self.entry(name).factory

    def create(self, name: str, **overrides: Any) -> T:
        """Build the variant ``name``, passing ``overrides`` to its factory."""
        return self.entry(name).factory(**overrides)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def classes(self) -> list[type[T]]:
        """The classes the entries build, each once, in registration order."""
        return list(dict.fromkeys(e.cls for e in self._entries.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._entries
