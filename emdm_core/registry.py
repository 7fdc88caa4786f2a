"""One registry class for everything pluggable: samplers, reveal schedules, masking schedules, model adapters.

    SAMPLERS = Registry("sampler", hint="register one with @register_sampler")
    @SAMPLERS.register("vanilla")
    class Vanilla(Strategy): ...
    SAMPLERS.get("vanilla"); SAMPLERS.available(); SAMPLERS.unregister("vanilla")

Unknown names raise `ConfigError` in one format that lists what is registered; `unregister` lets tests clean up.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object. Objects that have a `name` attribute get it set to their registered name."""

    def __init__(self, kind: str, base: type | None = None, error: type[Exception] = ConfigError):
        self.kind = kind
        self.base = base
        self.error = error
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated class or function under `name` (a later one replaces it)."""

        def deco(obj: T) -> T:
            if self.base is not None and not (isinstance(obj, type) and issubclass(obj, self.base)):
                raise TypeError(f"only subclasses of {self.base.__module__}.{self.base.__name__} can be registered "
                                f"as a {self.kind}")
            if isinstance(obj, type):
                obj.name = name  # type: ignore[attr-defined]
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """The object registered as `name`; unknown names list the registered ones."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise self.error(f"unknown {self.kind} {name!r}; registered {self.kind}s: "
                             f"{', '.join(self.available()) or 'none'}") from None

    def available(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def unregister(self, name: str) -> None:
        """Remove `name` (no error when it is not registered)."""
        self._items.pop(name, None)

    def items(self) -> list[tuple[str, T]]:
        """(name, object) pairs in registration order."""
        return list(self._items.items())

    def __contains__(self, name: Any) -> bool:
        return name in self._items
