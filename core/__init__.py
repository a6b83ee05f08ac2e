"""tuneforge: plugin-based fine-tuning of language models on Accelerate/DeepSpeed.

The public API for plugin authors: ``hookimpl`` (decorate hook implementations),
``Task`` / ``TaskOptions`` (task plugins), ``Adapter`` (adapter plugins),
``Tracker`` (tracker plugins), ``load_config`` and the error classes.
Heavy modules (torch, transformers, accelerate) are imported lazily.
"""

from __future__ import annotations

from typing import Any

from tuneforge.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DistributedError,
    PluginError,
    TrainingError,
    TuneforgeError,
)
from tuneforge.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DistributedError",
    "PluginError",
    "Task",
    "TaskOptions",
    "Tracker",
    "TrainingError",
    "TuneforgeError",
    "__version__",
    "hookimpl",
    "load_config",
]

_LAZY = {
    "Task": "tuneforge.tasks",
    "TaskOptions": "tuneforge.tasks",
    "Adapter": "tuneforge.adapters",
    "Tracker": "tuneforge.tracking",
    "load_config": "tuneforge.config",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tuneforge' has no attribute '{name}'")
