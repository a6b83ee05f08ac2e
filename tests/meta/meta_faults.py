"""A tracker plugin that SIGKILLs its own process once the run logs a given step, for the
kill-and-resume tests of `tuneforge meta` (import name ``meta_faults``).

``TF_META_KILL_AT=<split>:<step>`` (e.g. ``meta_train:3``): the first line of ``split`` logged
at ``step`` or later kills the process, after the jsonl tracker wrote it. Loaded through the
config (``plugins: [meta_faults]``, ``trackers: [jsonl, kill]``) with this directory on
``PYTHONPATH``; without the variable the tracker does nothing.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from tuneforge import hookimpl
from tuneforge.tracking import Tracker


class KillTracker(Tracker):
    def log_metrics(self, step: int, metrics: dict[str, float], split: str) -> None:
        target = os.environ.get("TF_META_KILL_AT")
        if target:
            kill_split, kill_step = target.split(":")
            if split == kill_split and step >= int(kill_step):
                os.kill(os.getpid(), signal.SIGKILL)


@hookimpl
def tf_register_trackers(register: Any) -> None:
    register("kill", KillTracker)
