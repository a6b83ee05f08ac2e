"""Cross-validation on the training set (``data.cv_folds``): what a run's validation metrics
are when no validation set exists, e.g. K examples per label (docs/few-shot.md).

:func:`cross_validate` trains once per fold (``data.cv_fold`` = 0..F-1: that stratified fold of
the training records is validation, the others train, see
:func:`tuneforge.builders.few_shot_records`) in ``output.dir/folds/fold-<i>``, never on test and
without exporting, and writes ``output.dir/results.json`` whose ``validation`` metrics are the
means over folds of each fold's *last* evaluation (the recipe as it will be applied to the whole
training set, which has no validation data to pick a step on). ``tuneforge search`` scores a
trial's ``validation.<metric>`` objective from there (:func:`tuneforge.search.objective.objective_value`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.config import RunConfig
from tuneforge.errors import TrainingError
from tuneforge.plugin_manager import PluginManager

log = logging.getLogger("tuneforge")


def fold_config(config: RunConfig, fold: int) -> RunConfig:
    """The config of one fold's run: ``data.cv_fold`` set, no test, no export, its own directory."""
    data = config.data.model_copy(update={"cv_fold": fold, "test": None})
    output = config.output.model_copy(update={"dir": str(Path(config.output.dir) / "folds" / f"fold-{fold}"),
                                              "export": False})
    return config.model_copy(update={"data": data, "output": output})


def mean_over_folds(per_fold: list[dict[str, float]]) -> dict[str, float]:
    """The mean of every metric that all folds report."""
    names = set.intersection(*(set(m) for m in per_fold)) if per_fold else set()
    return {name: float(np.mean([m[name] for m in per_fold])) for name in sorted(names)}


def cross_validate(config: RunConfig, plugins: PluginManager | None = None) -> dict[str, Any]:
    """Train every fold of ``data.cv_folds`` in turn; returns (and writes) the summary results."""
    from tuneforge.run import train

    assert config.data.cv_folds is not None
    started = time.perf_counter()
    folds = config.data.cv_folds
    per_fold: list[dict[str, float]] = []
    steps = 0
    train_seconds = 0.0
    for fold in range(folds):
        log.info("cross-validation: fold %d of %d", fold + 1, folds)
        results = train(fold_config(config, fold), plugins)
        if not results.get("validation"):
            raise TrainingError(f"cross-validation fold {fold} logged no validation metrics; set "
                                "evaluation.strategy to epoch (the last evaluation of each fold is scored)")
        per_fold.append(results["validation"])
        steps += int(results.get("steps") or 0)
        train_seconds += float(results.get("train_seconds") or 0.0)
    mean = mean_over_folds(per_fold)
    metric = config.evaluation.metric or results.get("metric")
    summary: dict[str, Any] = {
        "status": "completed",
        "steps": steps,
        "metric": metric,
        "best_metric": mean.get(str(metric)),
        "validation": mean,
        "cross_validation": {"folds": folds, "seed": config.data.shots_seed, "validation": mean,
                             "std": {k: float(np.std([m[k] for m in per_fold])) for k in mean},
                             "per_fold": per_fold},
        "train_seconds": round(train_seconds, 2),
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
    run_dir = Path(config.output.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    log.info("cross-validation over %d folds: %s", folds, " ".join(f"{k}={v:.4f}" for k, v in mean.items()))
    return summary
