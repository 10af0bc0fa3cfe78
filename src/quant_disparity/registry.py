"""One registry type for every kind of named thing: schemes, plan selectors, corpus readers, bundled models and
report formats.

An entry is a small object that knows its ``name`` and what it does (a scheme kind parses its syntax into a
scheme, a selector matches parameters, a reader reads a path ...). Lookups raise a :class:`UserError` with
"did you mean"; registering a name twice is refused.

Third-party packages add entries through entry points: an entry point in the registry's group (e.g.
``quant_disparity.schemes``) names an entry object (``"my_package.module:ENTRY"``), which the registry loads
and registers on its first lookup. A plugin that fails to load is one :class:`UserError` line naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Generic, Protocol, TypeVar

import click

from .errors import UserError, did_you_mean


class Entry(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=Entry)


class Registry(Generic[T]):
    """Entries of one kind by name, in registration order (built-ins first, then plugins by entry-point order).

    ``kind`` names the entries in messages ("scheme kind", "selector"); ``entry_type`` is what a plugin must
    provide; ``group`` is the entry-point group read on first lookup; ``hint`` makes the fix shown after an
    unknown name (default: the known names).
    """

    def __init__(self, kind: str, entry_type: type[T], group: str, hint: Callable[[Registry[T]], str] | None = None):
        self.kind = kind
        self.entry_type = entry_type
        self.group = group
        self._hint = hint
        self._items: dict[str, T] = {}
        self._plugins = "unloaded"  # -> "loading" -> "loaded" on the first lookup

    def register(self, entry: T) -> T:
        """Add an entry under its name; a name registered twice is a programming error (``ValueError``)."""
        if not isinstance(entry, self.entry_type):
            raise TypeError(f"a {self.kind} entry must be a {self.entry_type.__name__}, got {entry!r}")
        if entry.name in self._items:
            raise ValueError(f"{self.kind} {entry.name!r} is registered twice")
        self._items[entry.name] = entry
        return entry

    def _load_plugins(self) -> None:
        """Register the entries the group's entry points name, once; on a failure none of them stays."""
        if self._plugins != "unloaded":
            return
        self._plugins = "loading"  # a plugin that looks names up while it loads sees the built-ins
        before = dict(self._items)
        try:
            for ep in metadata.entry_points(group=self.group):
                self._register_plugin(ep)
        except UserError:
            self._items, self._plugins = before, "unloaded"
            raise
        self._plugins = "loaded"

    def _register_plugin(self, ep: metadata.EntryPoint) -> None:
        where = f"plugin {ep.name!r} ({ep.value}, entry point group {self.group})"
        fix = "fix or uninstall the package that provides it"
        try:
            entry = ep.load()
        except Exception as e:  # anything a third-party import can raise
            raise UserError(f"{where} failed to load: {type(e).__name__}: {e}", fix) from None
        try:
            self.register(entry)
        except (TypeError, ValueError) as e:
            raise UserError(f"{where}: {e}", fix) from None

    def lookup(self, name: str) -> T | None:
        self._load_plugins()
        return self._items.get(name)

    def get(self, name: str) -> T:
        entry = self.lookup(name)
        if entry is None:
            raise self.unknown(name)
        return entry

    def unknown(self, text: str, near: str | None = None, where: str | None = None) -> UserError:
        """The error for an unknown ``text``; close matches are sought for ``near`` (default ``text``)."""
        prefix = f"{where}: " if where else ""
        return UserError(f"{prefix}unknown {self.kind} {text!r}{did_you_mean(near or text, self.names())}", self.hint())

    def hint(self) -> str:
        return self._hint(self) if self._hint else f"known: {', '.join(self.names())}"

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def names(self) -> list[str]:
        self._load_plugins()
        return list(self._items)

    def values(self) -> list[T]:
        self._load_plugins()
        return list(self._items.values())

    def items(self) -> list[tuple[str, T]]:
        self._load_plugins()
        return list(self._items.items())


class RegistryChoice(click.ParamType):
    """A command-line value naming an entry, converted to the entry; ``--help`` shows the registered names,
    read when it is shown."""

    name = "choice"

    def __init__(self, registry: Registry):
        self.registry = registry

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "[" + "|".join(self.registry.names()) + "]"

    def convert(self, value, param, ctx):
        return value if isinstance(value, self.registry.entry_type) else self.registry.get(value)
