"""Objectives: which logged number scores a trial, in which direction, and how it is read.

A trial's numbers come from its run directory: ``results.json`` (written by every
run), ``trial_evaluations.jsonl`` and ``trial_info.json`` (written by the trial
reporter plugin on rank 0). Objective names:

* ``validation.<metric>``: the best value of ``<metric>`` over the run's evaluations
  (what the exported model reached); also what pruners see at each evaluation. A
  cross-validated run (``data.cv_folds``): the mean over folds from its ``results.json``.
* ``test.<metric>``: the test metric of the best model.
* ``train_seconds``, ``wall_seconds``, ``steps``, ``trainable_params``, ``total_params``.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.config import RunConfig
from tuneforge.errors import ConfigError, TuneforgeError, did_you_mean

PLAIN = {
    "train_seconds": "minimize",
    "wall_seconds": "minimize",
    "steps": "minimize",
    "trainable_params": "minimize",
    "total_params": "minimize",
}
EVALUATIONS = "trial_evaluations.jsonl"
INFO = "trial_info.json"
STATUS = "trial_status.json"


@dataclass(frozen=True)
class Objective:
    metric: str  # e.g. validation.accuracy
    direction: str  # maximize | minimize

    @property
    def split(self) -> str | None:
        return self.metric.split(".", 1)[0] if "." in self.metric else None

    @property
    def name(self) -> str:
        """The metric name inside its split (``accuracy`` for ``validation.accuracy``)."""
        return self.metric.split(".", 1)[1] if "." in self.metric else self.metric

    def better(self, a: float, b: float) -> bool:
        return a > b if self.direction == "maximize" else a < b


def resolve_objectives(config: RunConfig, task_cls: Any) -> list[Objective]:
    """The study's objectives, with directions filled in from the task where omitted."""
    assert config.search is not None
    selection = config.evaluation.metric or task_cls.primary_metric
    greater = task_cls.metric_greater_is_better(selection) if config.evaluation.greater_is_better is None else (
        config.evaluation.greater_is_better)
    specs = config.search.objectives or []
    if not specs:
        if not selection:
            raise ConfigError(f"task '{config.task.name}' has no primary metric; set search.objectives")
        return [Objective(f"validation.{selection}", "maximize" if greater else "minimize")]
    out = []
    for i, spec in enumerate(specs):
        where = f"search.objectives[{i}].metric"
        metric = spec.metric
        if metric in PLAIN:
            out.append(Objective(metric, spec.direction or PLAIN[metric]))
            continue
        split, dot, name = metric.partition(".")
        if split not in ("validation", "test") or not dot or not name:
            raise ConfigError(
                f"{where}: '{metric}' is not an objective; use validation.<metric>, test.<metric> or one of "
                f"{', '.join(PLAIN)}"
            )
        direction = spec.direction
        if direction is None:
            if name == selection:
                direction = "maximize" if greater else "minimize"
            elif name == "loss":
                direction = "minimize"
            else:
                raise ConfigError(f"{where}: give the direction of '{metric}' (direction: maximize or minimize)")
        out.append(Objective(metric, direction))
    return out


def check_objectives(objectives: list[Objective], config: RunConfig, task_cls: Any = None) -> None:
    """Each objective must be a metric the trials will log: validation data that is evaluated
    within the run's steps, test data, and a metric name the task (or an extra metric) produces."""
    d, ev, t = config.data, config.evaluation, config.training
    has_validation = d.has_validation and ev.strategy != "no"
    names = [*getattr(task_cls, "metric_names", ()), *ev.extra_metrics]
    for o in objectives:
        if o.split == "validation" and not has_validation:
            raise ConfigError(
                f"objective '{o.metric}' needs evaluation on validation data: set data.validation (or "
                "data.validation_fraction) and evaluation.strategy epoch/steps"
            )
        if (o.split == "validation" and ev.strategy == "steps" and t.max_steps is not None
                and ev.every_n_steps is not None and ev.every_n_steps > t.max_steps):
            raise ConfigError(
                f"objective '{o.metric}': evaluation.every_n_steps={ev.every_n_steps} is more than "
                f"training.max_steps={t.max_steps}, so no trial would ever evaluate; lower evaluation.every_n_steps"
            )
        if o.split == "test" and not (d.test or d.hf_dataset):
            raise ConfigError(f"objective '{o.metric}' needs test data: set data.test")
        if o.split in ("validation", "test") and task_cls is not None and task_cls.metric_names:
            name = o.metric.partition(".")[2]
            if not any(fnmatch.fnmatchcase(name, pattern) for pattern in names):
                raise ConfigError(
                    f"objective '{o.metric}': task '{config.task.name}' does not produce '{name}'"
                    f"{did_you_mean(name, names)}; it produces: {', '.join(names)}"
                )


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def read_evaluations(run_dir: Path) -> list[dict[str, Any]]:
    from tuneforge.data import read_jsonl  # here: tuneforge.data imports torch

    path = run_dir / EVALUATIONS
    return read_jsonl(path, skip_invalid=True) if path.is_file() else []  # skipped: a line cut by a kill


def objective_value(objective: Objective, run_dir: Path, *, last: bool = False) -> float:
    """The value of ``objective`` for the run in ``run_dir``; :class:`TuneforgeError` if not logged.

    ``last=True`` takes the latest evaluation instead of the best (PBT ranks members by
    their current state).
    """
    results = read_json(run_dir / "results.json")
    info = read_json(run_dir / INFO)
    if objective.metric in ("trainable_params", "total_params"):
        value = info.get(objective.metric)
    elif objective.metric in PLAIN:
        value = results.get(objective.metric, info.get(objective.metric))
    elif objective.split == "test":
        value = (results.get("test") or {}).get(objective.name)
        if value is None and results.get("test"):
            raise TuneforgeError(f"metric '{objective.name}' was not logged on test; logged: "
                                 f"{', '.join(sorted(results['test']))}")
    elif "cross_validation" in results:  # data.cv_folds: the means over folds (tuneforge.crossval)
        value = results["cross_validation"]["validation"].get(objective.name)
    else:
        evals = read_evaluations(run_dir)
        values = [e["metrics"][objective.name] for e in evals  # null: undefined at that evaluation
                  if e.get("metrics", {}).get(objective.name) is not None]
        if evals and not values:
            raise TuneforgeError(f"metric '{objective.name}' was not logged on validation; logged: "
                                 f"{', '.join(sorted(evals[-1].get('metrics', {})))}")
        if values:
            value = values[-1] if last else (max(values) if objective.direction == "maximize" else min(values))
        else:
            value = None
    if value is None:
        raise TuneforgeError(f"objective '{objective.metric}' was not logged by the trial")
    return float(value)
