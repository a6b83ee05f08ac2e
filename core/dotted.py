"""Dotted keys (``training.lr``) into nested dicts: the one get/set that config loading,
overrides, search spaces and the DeepSpeed JSON share."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

from tuneforge.errors import ConfigError

#: Returned by :func:`get_dotted` for a key that is absent (``None`` may be a real value).
MISSING: Any = object()


def get_dotted(tree: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    """The value at ``dotted`` in ``tree``, or ``default`` when any part of the path is absent."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def set_dotted(tree: MutableMapping[str, Any], dotted: str, value: Any) -> None:
    """Set ``dotted`` in ``tree``, creating sections on the way. A path through a plain value
    (``training.lr.x`` where ``training.lr`` is a number) is a :class:`ConfigError`."""
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, MutableMapping):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"override '{dotted}': '{where}' is a value, not a section")
        node = child
    node[parts[-1]] = value
