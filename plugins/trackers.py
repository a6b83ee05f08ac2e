"""Built-in trackers: ``jsonl`` (metrics.jsonl in the run directory)."""

from __future__ import annotations

import json
import time
from typing import Any

from tuneforge import hookimpl
from tuneforge.tracking import Tracker


class JsonlTracker(Tracker):
    """Appends one JSON object per log call to ``<run_dir>/metrics.jsonl``;
    hyperparameters and system info go to ``<run_dir>/params.json``."""

    def log_params(self, params: dict[str, Any]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "params.json").write_text(json.dumps(params, indent=2, default=str), encoding="utf-8")

    def log_metrics(self, step: int, metrics: dict[str, float], split: str) -> None:
        line = {"step": step, "split": split, "time": round(time.time(), 3), **metrics}
        with (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")


@hookimpl
def tf_register_trackers(register: Any) -> None:
    register("jsonl", JsonlTracker)
