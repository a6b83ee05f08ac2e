"""The tracker interface. Trackers are plugins (``tf_register_trackers``) and only
run on the main process; the loop calls them through :class:`Trackers`."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class Tracker(ABC):
    """One experiment-tracking backend for one run."""

    #: Install hint shown when the backend's package is missing.
    requires: str | None = None

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.config = config

    def check_available(self) -> None:  # noqa: B027 - optional hook
        """Raise :class:`tuneforge.errors.PluginError` with an install hint if unusable."""

    def log_params(self, params: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Record hyperparameters / resolved config / system info once at start."""

    @abstractmethod
    def log_metrics(self, step: int, metrics: dict[str, float], split: str) -> None:
        """Record metrics of ``split`` (train, validation, test) at ``step``."""

    def resume(self, step: int) -> None:  # noqa: B027 - optional hook
        """The run continues from a checkpoint at ``step``: whatever an interrupted attempt
        logged after ``step`` is about to be logged again; set it aside (called before
        ``log_params``)."""

    def finish(self, status: str) -> None:  # noqa: B027 - optional hook
        """Flush and close; ``status`` is 'completed', 'early_stopped' or 'failed'."""


class Trackers:
    """Fan-out to the configured trackers (empty on non-main ranks)."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    def log_params(self, params: dict[str, Any]) -> None:
        for t in self.trackers:
            t.log_params(params)

    def log_metrics(self, step: int, metrics: dict[str, float], split: str) -> None:
        for t in self.trackers:
            t.log_metrics(step, metrics, split)

    def resume(self, step: int) -> None:
        for t in self.trackers:
            t.resume(step)

    def finish(self, status: str) -> None:
        for t in self.trackers:
            try:
                t.finish(status)
            except Exception as exc:  # a tracker failing to flush must not mask the run's outcome
                log.warning("tracker %s failed to finish: %s", type(t).__name__, exc)
