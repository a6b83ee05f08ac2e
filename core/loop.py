"""The training loop: read this file top to bottom to know what a run does.

Everything is already built and prepared by :mod:`tuneforge.run`; here we only
step, evaluate, checkpoint and stop. Distribution lives behind ``run.runtime``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneforge.checkpoint import CheckpointManager
from tuneforge.config import RunConfig
from tuneforge.distributed import Runtime
from tuneforge.errors import ConfigError, TrainingError, did_you_mean
from tuneforge.evaluation import collect_outputs
from tuneforge.plugin_manager import PluginManager
from tuneforge.progress import Progress
from tuneforge.tasks import Task, score
from tuneforge.tracking import Trackers


@dataclass
class TrainState:
    """Everything besides tensors needed to continue a run exactly (saved as JSON)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed (per rank)
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    nonfinite_skips: int = 0
    world_size: int = 1  # processes that wrote this state
    micro_batch_size: int = 0  # training.batch_size that wrote it (0: unknown); with world_size, the data position


@dataclass
class RunContext:
    """What hooks and the loop see of a run.

    Hooks observe; the two methods below are the explicit channel through which a plugin
    steers a run (search trials prune and pause with ``request_stop`` and resume PBT members
    with new values through ``set_hyperparameters``). Call them on every rank alike.
    """

    config: RunConfig
    run_dir: Path
    runtime: Runtime
    plugins: PluginManager
    task: Task
    model: torch.nn.Module
    tokenizer: Any
    state: TrainState
    trackers: Trackers
    checkpoints: CheckpointManager
    features: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    optimizer: Any = None  # the prepared optimizer (change its values with set_hyperparameters)
    scheduler: Any = None  # the prepared LR scheduler
    stop_requested: tuple[str, str] | None = None  # (status, reason) from request_stop

    @property
    def is_main(self) -> bool:
        return self.runtime.is_main

    def request_stop(self, reason: str, *, status: str = "stopped") -> None:
        """End training cleanly after the current step: its evaluation and checkpoints run as
        usual, the final state is saved, ``tf_on_fit_end`` sees ``result.status == status``
        and the run finishes (test evaluation, export, ``results.json``) as after any end.
        The first request wins; one made after the last step changes nothing."""
        if self.stop_requested is None:
            self.stop_requested = (status, reason)

    def set_hyperparameters(self, *, lr: float | None = None, weight_decay: float | None = None,
                            eps: float | None = None) -> None:
        """Make the optimizer follow new values from the next step on (e.g. after a resume
        restored the checkpoint's). ``lr`` is the new peak learning rate: the schedule keeps its
        position, so the current lr is scaled by the schedule's current factor. ``weight_decay``
        applies to the groups that decay (weights, not biases or norms)."""
        schedule = self.runtime.unwrap(self.scheduler)  # Accelerate wraps the schedule
        groups = self.optimizer.param_groups
        base_lrs = getattr(schedule, "base_lrs", None)
        for i, group in enumerate(groups):
            if lr is not None:
                factor = group["lr"] / base_lrs[i] if base_lrs and base_lrs[i] else 1.0
                group["lr"], group["initial_lr"] = lr * factor, lr
            if eps is not None:
                group["eps"] = eps
            if weight_decay is not None:
                decays = bool(group["params"]) and group["params"][0].ndim >= 2
                group["weight_decay"] = weight_decay if decays else 0.0
        if lr is not None and base_lrs is not None:
            schedule.base_lrs = [lr for _ in groups]


@dataclass
class FitResult:
    state: TrainState
    total_steps: int
    status: str  # completed | early_stopped | the status given to RunContext.request_stop
    last_metrics: dict[str, float] = field(default_factory=dict)
    best_checkpoint: Path | None = None
    train_seconds: float = 0.0


def total_training_steps(config: RunConfig, steps_per_epoch: int) -> int:
    t = config.training
    return t.max_steps if t.max_steps is not None else max(1, math.ceil(t.epochs * steps_per_epoch))


def evaluate(run: RunContext, loader: Any, split: str) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Run the task's evaluation step over ``loader`` on all ranks; metrics on every rank."""
    outputs = collect_outputs(run.model, run.task, loader, gather=run.runtime.gather_for_metrics)
    metrics = score(run.task, outputs, split, run.features[split], run.config.evaluation.extra_metrics,
                    run.plugins.metrics)
    return metrics, outputs


def fit(
    run: RunContext,
    train_loader: Any,
    eval_loader: Any | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    total_steps: int,
) -> FitResult:
    cfg, rt, s, task, model = run.config, run.runtime, run.state, run.task, run.model
    t, ev = cfg.training, cfg.evaluation
    metric_name = ev.metric or task.primary_metric
    greater = task.metric_greater_is_better(metric_name) if ev.greater_is_better is None else ev.greater_is_better
    batches_per_epoch = len(train_loader)

    def save_checkpoint(is_best: bool = False) -> Path:
        path = run.checkpoints.save(s.step, asdict(s), rt.save_state, rt.barrier, is_best=is_best)
        run.plugins.call("tf_on_checkpoint", run=run, step=s.step, path=path)
        return path

    def run_evaluation() -> bool:
        """Evaluate, track the best model; returns True when early stopping triggers."""
        assert eval_loader is not None
        metrics, _ = evaluate(run, eval_loader, "validation")
        run.trackers.log_metrics(s.step, metrics, "validation")
        progress.write(f"step {s.step} validation " + " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
        run.plugins.call("tf_on_evaluate", run=run, step=s.step, split="validation", metrics=metrics)
        last_eval.update(metrics)
        if metric_name not in metrics:
            raise ConfigError(
                f"evaluation.metric: '{metric_name}' is not among the validation metrics of task "
                f"'{cfg.task.name}'{did_you_mean(metric_name, metrics)}: {', '.join(sorted(metrics))}"
            )
        value = metrics[metric_name]
        delta = ev.early_stopping_min_delta
        improved = math.isfinite(value) and (s.best_metric is None or (  # nan: undefined, never the best
            value > s.best_metric + delta if greater else value < s.best_metric - delta
        ))
        if improved:
            s.best_metric, s.best_step, s.evals_without_improvement = value, s.step, 0
            if cfg.output.save_best:
                save_checkpoint(is_best=True)
        else:
            s.evals_without_improvement += 1
        patience = ev.early_stopping_patience
        return patience is not None and s.evals_without_improvement >= patience

    last_eval: dict[str, float] = {}
    status = "completed"
    progress = Progress(total_steps, s.step, enabled=rt.is_main, every=t.log_every_n_steps)
    run.plugins.call("tf_on_fit_start", run=run)
    started = time.perf_counter()
    model.train()
    losses: list[torch.Tensor] = []  # micro-batch losses of the current optimizer step
    done = s.step >= total_steps
    while not done:
        train_loader.set_epoch(s.epoch)
        loader = rt.skip_batches(train_loader, s.batch_in_epoch)
        loader.set_epoch(s.epoch)
        consumed = s.batch_in_epoch
        for batch in loader:
            with rt.accumulate(model):
                loss = task.training_loss(model, batch)
                rt.backward(loss)
            losses.append(loss.detach())
            consumed += 1
            if not rt.sync_gradients:
                continue

            loss_value = rt.mean(torch.stack(losses).float().mean())
            losses.clear()
            # clip + step + zero grads; nothing is applied when the loss or the gradients are not finite
            outcome = rt.optimizer_step(model, optimizer, t.max_grad_norm, discard=not math.isfinite(loss_value))
            grad_norm = outcome.grad_norm
            if outcome.nonfinite:
                s.nonfinite_skips += 1
                if t.nan_policy == "stop" or s.nonfinite_skips > t.max_nan_skips:
                    path = save_checkpoint()
                    raise TrainingError(
                        f"non-finite loss/gradients at step {s.step + 1} (loss={loss_value}, grad_norm={grad_norm}); "
                        f"the last good state is saved at {path}. Lower training.lr, enable max_grad_norm, "
                        "or set training.nan_policy=skip."
                    )
                progress.write(f"step {s.step + 1}: non-finite loss/gradients, step skipped ({s.nonfinite_skips})")
                s.batch_in_epoch = consumed
                continue
            if outcome.applied:
                scheduler.step()
            s.step += 1
            s.batch_in_epoch = consumed

            lr = scheduler.get_last_lr()[0]
            step_metrics = {"loss": loss_value, "lr": lr, "epoch": s.epoch + consumed / batches_per_epoch}
            if grad_norm is not None:
                step_metrics["grad_norm"] = grad_norm
            progress.update(s.step, loss_value, lr)
            if s.step % t.log_every_n_steps == 0 or s.step == total_steps:
                run.trackers.log_metrics(s.step, step_metrics, "train")
            run.plugins.call("tf_on_step_end", run=run, step=s.step, metrics=step_metrics)

            done = s.step >= total_steps
            end_of_epoch = consumed >= batches_per_epoch
            stop_early = False
            if eval_loader is not None and (
                (ev.strategy == "steps" and s.step % (ev.every_n_steps or 1) == 0)
                or (ev.strategy == "epoch" and (end_of_epoch or done))
            ):
                stop_early = run_evaluation()
            if cfg.output.save_every_n_steps and s.step % cfg.output.save_every_n_steps == 0:
                save_checkpoint()
            if run.stop_requested is not None:
                (status, reason), done = run.stop_requested, True
                progress.write(f"stopping at step {s.step} ({status}): {reason}")
            elif stop_early:
                status, done = "early_stopped", True
                progress.write(f"early stopping at step {s.step}: no improvement in {metric_name} for "
                               f"{ev.early_stopping_patience} evaluations")
            if done:
                break
        else:
            s.epoch, s.batch_in_epoch = s.epoch + 1, 0
    progress.close()
    if not run.checkpoints.complete() or run.checkpoints.complete()[-1].name != f"step-{s.step:08d}":
        save_checkpoint()  # the final state is always resumable
    result = FitResult(s, total_steps, status, last_eval, run.checkpoints.best(), time.perf_counter() - started)
    run.plugins.call("tf_on_fit_end", run=run, result=result)
    return result
