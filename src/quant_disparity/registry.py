"""One registry type for named things (schemes, models, corpora, selectors) with "did you mean" errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import UserError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to objects. ``get`` raises a :class:`UserError` with close matches."""

    def __init__(self, kind: str, list_hint: str | None = None):
        self.kind = kind
        self.list_hint = list_hint
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = item
        return item

    def decorator(self, name: str) -> Callable[[T], T]:
        def wrap(item: T) -> T:
            return self.register(name, item)

        return wrap

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            hint = self.list_hint or f"known: {', '.join(sorted(self._items))}"
            raise UserError(f"unknown {self.kind} {name!r}{did_you_mean(name, self._items)}", hint) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def items(self):
        return self._items.items()

    def names(self) -> list[str]:
        return list(self._items)
