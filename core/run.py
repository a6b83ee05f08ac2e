"""One training run, from a validated config to a run directory: read :func:`train_plan`
as the story of a run.

The parts live where their job is: :mod:`tuneforge.preflight` (checks before anything heavy),
:mod:`tuneforge.builders` (task, records, model, loaders, optimizer), :mod:`tuneforge.resume`
(rank agreement, the run directory, continuing from a checkpoint), :mod:`tuneforge.loop` (the
steps). Here they are put in order, and the run is finished: best checkpoint, test, export.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from tuneforge import jsonio
from tuneforge.adapters import describe_parameters
from tuneforge.builders import (
    build_loaders,
    build_model,
    build_optimizer,
    build_plugins,
    build_scheduler,
    load_records,
    load_trained_model,
    setup_logging,
)
from tuneforge.checkpoint import CheckpointManager
from tuneforge.config import RunConfig
from tuneforge.data import steps_per_epoch
from tuneforge.loop import FitResult, RunContext, evaluate, fit, total_training_steps
from tuneforge.plugin_manager import PluginManager
from tuneforge.preflight import Plan, preflight
from tuneforge.resume import check_rank_consistency, prepare_run_dir, restore, resume_position
from tuneforge.tracking import Trackers

__all__ = [  # what other modules and users import from here (the parts' own modules are their homes)
    "Plan", "build_optimizer", "build_plugins", "check_rank_consistency", "finish", "load_records",
    "load_trained_model", "preflight", "resume_position", "train", "train_plan",
]

log = logging.getLogger("tuneforge")


def train(config: RunConfig, plugins: PluginManager | None = None) -> dict[str, Any]:
    """Train, evaluate and export one run; returns the results written to results.json.

    An exception raised in a plugin's code (task, adapter, tracker) comes out as a
    :class:`PluginError` naming the plugin. With ``data.cv_folds`` (and no ``data.cv_fold``),
    one run per fold: :func:`tuneforge.crossval.cross_validate`."""
    if config.data.cv_folds is not None and config.data.cv_fold is None:
        from tuneforge.crossval import cross_validate

        return cross_validate(config, plugins)
    plan = preflight(config, plugins)
    with plan.plugins.blaming():
        return train_plan(plan)


def train_plan(plan: Plan) -> dict[str, Any]:
    """The run of a preflighted plan."""
    from tuneforge.distributed import create_runtime

    config, t = plan.config, plan.config.training
    runtime = create_runtime(config, plan.strategy)
    setup_logging(runtime.is_main)
    log.info("distributed: %s", runtime.strategy.describe())
    check_rank_consistency(config, plan.plugins, runtime)
    run_dir = Path(config.output.dir)
    checkpoints = CheckpointManager(run_dir, config.output.keep_last, is_main=runtime.is_main)
    resume_from = prepare_run_dir(config, checkpoints, runtime)

    task = plan.make_task()
    records = load_records(config, task, plan.records)
    tokenizer = task.load_tokenizer()
    if resume_from is None or not task.load_state(run_dir):  # labels of an interrupted run are kept
        task.prepare(records["train"])
    if runtime.is_main:
        task.save_state(run_dir)
    features = {split: task.encode(recs, tokenizer, split) for split, recs in records.items()}
    model = build_model(config, task, tokenizer, plan.make_adapter())
    log.info(describe_parameters(model))

    train_loader, eval_loaders = build_loaders(config, task, tokenizer, features)
    optimizer = build_optimizer(model, config)
    model, optimizer, train_loader, *prepared = runtime.prepare(model, optimizer, train_loader, *eval_loaders.values())
    eval_loaders = dict(zip(eval_loaders, prepared))
    task.setup(runtime, model)  # before restore: the model still holds its initial weights
    total_steps = total_training_steps(
        config, steps_per_epoch(len(train_loader) * runtime.num_processes, runtime.num_processes,
                                t.gradient_accumulation_steps)
    )
    scheduler = build_scheduler(optimizer, config, total_steps)
    runtime.register_for_checkpointing(scheduler)
    state = restore(runtime, resume_from, t.batch_size)

    trackers = Trackers(
        [cls(run_dir, config.model_dump(mode="json")) for cls in plan.tracker_classes] if runtime.is_main else []
    )
    for tracker in trackers.trackers:
        tracker.check_available()
    if resume_from is not None:
        trackers.resume(state.step)
    run = RunContext(config, run_dir, runtime, plan.plugins, task, model, tokenizer, state, trackers,
                     checkpoints, features, optimizer=optimizer, scheduler=scheduler)
    trackers.log_params(_run_params(config, runtime, model))
    started = time.perf_counter()
    status = "failed"
    try:
        result = fit(run, train_loader, eval_loaders.get("validation"), optimizer, scheduler, total_steps)
        status = result.status
        results = finish(run, result, eval_loaders.get("test"))
        results["wall_seconds"] = round(time.perf_counter() - started, 2)
        if runtime.is_main:
            (run_dir / "results.json").write_text(jsonio.dumps(results, indent=2), encoding="utf-8")
        return results
    except BaseException as exc:
        plan.plugins.call("tf_on_exception", run=run, exc=exc)
        raise
    finally:
        trackers.finish(status)
        runtime.end()


def finish(run: RunContext, result: FitResult, test_loader: Any) -> dict[str, Any]:
    """Load the best checkpoint, evaluate on test, export the model, and summarise."""
    rt, cfg = run.runtime, run.config
    best = run.checkpoints.best()
    if best is not None and best != run.checkpoints.complete()[-1]:
        rt.load_state(best)
    results: dict[str, Any] = {
        "status": result.status,
        "steps": result.state.step,
        "best_step": result.state.best_step,
        "best_metric": result.state.best_metric,
        "metric": cfg.evaluation.metric or run.task.primary_metric,
        "validation": result.last_metrics,
        "train_seconds": round(result.train_seconds, 2),
        "world_size": rt.num_processes,
        "nonfinite_skips": result.state.nonfinite_skips,
    }
    if test_loader is not None:
        metrics, outputs = evaluate(run, test_loader, "test")
        run.trackers.log_metrics(result.state.step, metrics, "test")
        run.plugins.call("tf_on_evaluate", run=run, step=result.state.step, split="test", metrics=metrics)
        results["test"] = metrics
        if rt.is_main:
            run.task.write_reports(outputs, "test", run.features["test"], run.run_dir)
        log.info("test " + " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
    if cfg.output.export:
        export_dir = run.run_dir / "model"
        rt.export_model(run.model, export_dir, run.tokenizer)
        if rt.is_main:
            run.task.save_state(export_dir)
        results["model_dir"] = str(export_dir)
    return results


def _run_params(config: RunConfig, runtime: Any, model: torch.nn.Module) -> dict[str, Any]:
    import platform

    import transformers

    from tuneforge import __version__
    from tuneforge.adapters import count_parameters

    trainable, total = count_parameters(model)
    return {
        "config": config.model_dump(mode="json"),
        "system": {
            "tuneforge": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "world_size": runtime.num_processes,
            "distributed": runtime.kind,
            "device": str(runtime.device),
            "hostname": platform.node(),
            "pid": os.getpid(),
        },
        "parameters": {"trainable": trainable, "total": total, "trainable_fraction": trainable / max(total, 1)},
    }
