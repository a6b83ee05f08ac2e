"""JSON that other programs can read: an undefined metric (``nan``, ``inf``) is ``null``.

Python's ``json`` writes ``NaN`` and ``Infinity``, which no JSON parser but Python's
accepts. Everything tuneforge writes for others (stdout lines, ``metrics.jsonl``,
``results.json``, ``metrics.json``, a trial's evaluations) goes through :func:`dumps`.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every non-finite float inside dicts, lists and tuples replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(obj: Any, **kwargs: Any) -> str:
    """:func:`json.dumps` of ``obj`` with non-finite floats written as ``null``."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)
