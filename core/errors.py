"""The small hierarchy of errors tuneforge raises at users.

Every message says what is wrong *and* what to change. The CLI prints
``TuneforgeError`` subclasses as one line (no traceback); anything else is a bug.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TuneforgeError(Exception):
    """Base class of every error meant for a user."""


class ConfigError(TuneforgeError):
    """A config file, a config key or a command-line override is invalid."""


class PluginError(TuneforgeError):
    """A plugin is missing, registers a duplicate name, or failed inside a hook."""


class DataError(TuneforgeError):
    """A data file is missing or malformed (the message names file, record and field)."""


class CheckpointError(TuneforgeError):
    """A checkpoint is missing, incomplete or corrupted."""


class DistributedError(TuneforgeError):
    """The process group or launcher is set up in a way tuneforge cannot train with."""


class TrainingError(TuneforgeError):
    """Training cannot go on (for example a non-finite loss under the ``stop`` policy)."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""
