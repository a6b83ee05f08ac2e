"""Pruners from ``search.pruner`` (median, successive halving / ASHA, Hyperband)."""

from __future__ import annotations

from typing import Any

from tuneforge.config import SearchPruner


def build_pruner(cfg: SearchPruner) -> Any:
    """The Optuna pruner for ``cfg``. The controller and every trial process build the same one."""
    import optuna

    if cfg.type == "none":
        return optuna.pruners.NopPruner()
    if cfg.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.n_startup_trials, n_warmup_steps=cfg.n_warmup_steps)
    if cfg.type in ("successive_halving", "asha"):
        # Optuna's SuccessiveHalvingPruner is the asynchronous variant (ASHA).
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=cfg.min_resource or "auto", reduction_factor=cfg.reduction_factor
        )
    return optuna.pruners.HyperbandPruner(
        min_resource=cfg.min_resource or 1, max_resource=cfg.max_resource or "auto",
        reduction_factor=cfg.reduction_factor,
    )
