"""Named registries filled by the composition hooks (``tf_register_*``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from tuneforge.errors import PluginError, did_you_mean

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    plugin: str


class Registry(Generic[T]):
    """A name -> object map that remembers which plugin registered each name.

    A second registration of the same name is refused with an error naming both
    plugins, so two packages can never silently shadow each other.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def add(self, name: str, obj: T, *, plugin: str) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin '{plugin}' registered a {self.kind} with an invalid name {name!r}")
        if name in self._entries:
            first = self._entries[name].plugin
            raise PluginError(
                f"{self.kind} '{name}' is registered twice: by plugin '{first}' and by plugin '{plugin}'. "
                f"Disable one of them (TUNEFORGE_DISABLE_PLUGINS={plugin}) or rename the {self.kind}."
            )
        self._entries[name] = Entry(name, obj, plugin)

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            available = ", ".join(sorted(self._entries)) or "none"
            raise PluginError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self._entries)}; available: {available}. "
                f"A {self.kind} comes from a plugin: install it, or check TUNEFORGE_LOAD_PLUGINS / "
                f"TUNEFORGE_DISABLE_PLUGINS."
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in sorted(self._entries)]
