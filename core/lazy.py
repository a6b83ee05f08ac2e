"""Package exports imported on first use (PEP 562): importing a package stays cheap, and modules
of two packages that build on each other (the run schema and the ``meta:``/``search:`` sections
beside their packages) do not form an import cycle through the packages' ``__init__``."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any


def lazy_exports(package: str, names: Sequence[str], modules: Sequence[str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: each of ``names`` is taken from the first of
    ``modules`` (imported in this order, on first use) that defines it."""
    exported = frozenset(names)

    def __getattr__(name: str) -> Any:
        if name in exported:
            for module in modules:
                namespace = vars(importlib.import_module(module))
                if name in namespace:
                    return namespace[name]
        raise AttributeError(f"module '{package}' has no attribute '{name}'")

    return __getattr__
