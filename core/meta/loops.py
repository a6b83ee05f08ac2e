"""Meta-training, the multi-task baseline, and meta-test evaluation.

All three spread work over processes through :class:`tuneforge.distributed.Runtime`:
episodes (or batches) are dealt round-robin to ranks and flat gradient vectors are
averaged with ``runtime.all_reduce``; every rank applies the same update, so the
parameters stay identical everywhere without wrapping the model in DDP.

The two training loops can be interrupted and continued: every ``checkpoint_every``
steps (and at their last step) they hand ``checkpoint(step, state)`` a state dict
(parameters, optimizer and schedule) that, given back as ``resume``, continues the
loop exactly where it stopped. Episodes and batches depend only on their index, so
a resumed loop takes the same steps as an uninterrupted one.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from tuneforge.config import MetaConfig
from tuneforge.errors import TrainingError
from tuneforge.meta.algorithm import MetaAlgorithm
from tuneforge.meta.episodes import EpisodeSampler, LabelPool, mean_ci95
from tuneforge.meta.learner import ContrastiveAdaptation, EpisodeLearner

log = logging.getLogger("tuneforge.meta")


class _Collective:
    """What the loops need of a Runtime (a single-process stand-in is used in unit tests)."""

    num_processes = 1
    process_index = 0

    def all_reduce(self, tensor: torch.Tensor, op: str = "mean") -> torch.Tensor:
        return tensor.clone()

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj]


SINGLE_PROCESS = _Collective()


Checkpoint = Callable[[int, dict[str, Any]], None]


@dataclass
class TrainHistory:
    steps: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def _due(step: int, total: int, every: int | None) -> bool:
    return step == total or (every is not None and step % every == 0)


def _outer_optimizer(params: list[torch.nn.Parameter], kind: str, lr: float, steps: int,
                     schedule: str) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr) if kind == "sgd" else torch.optim.Adam(params, lr=lr)
    total = max(1, steps)
    factor = (lambda s: 1.0 - s / total) if schedule == "linear" else (lambda s: 1.0)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def meta_train(
    learner: EpisodeLearner,
    algorithm: MetaAlgorithm,
    sampler: EpisodeSampler,
    config: MetaConfig,
    runtime: Any = SINGLE_PROCESS,
    *,
    seed: int = 0,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    resume: dict[str, Any] | None = None,
    checkpoint: Checkpoint | None = None,
    checkpoint_every: int | None = None,
) -> TrainHistory:
    """Run ``config.meta_steps`` outer updates in place on ``learner``'s parameters
    (the remaining ones when ``resume`` is a state an earlier ``checkpoint`` call got).

    Episode ``step * meta_batch_size + j`` is task ``j`` of outer step ``step``;
    rank ``r`` handles the tasks ``j`` with ``j % world == r``.
    """
    history = TrainHistory()
    started = time.perf_counter()
    opt, sched = _outer_optimizer(learner.params, config.outer_optimizer, config.outer_lr, config.meta_steps,
                                  config.outer_schedule)
    first = 0
    if resume is not None:
        learner.load_flat(resume["theta"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        first = int(resume["step"])
    world, rank, batch = runtime.num_processes, runtime.process_index, config.meta_batch_size
    for step in range(first, config.meta_steps):
        theta = learner.flat()
        total = torch.zeros_like(theta)
        losses = torch.zeros(2)  # (sum of task losses, tasks) on this rank
        for j in range(rank, batch, world):
            index = step * batch + j
            update = algorithm.task_gradient(learner, sampler.episode(index), random.Random(f"inner:{seed}:{index}"))
            total += update.vector
            losses += torch.tensor([update.loss, 1.0])
            learner.load_flat(theta)
        gradient = runtime.all_reduce(total, op="sum") / batch
        losses = runtime.all_reduce(losses, op="sum")
        if not torch.isfinite(gradient).all():
            raise TrainingError(f"meta step {step}: the meta-gradient is not finite; lower meta.inner_lr/outer_lr")
        learner.set_grad(gradient)
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        metrics = {"loss": float(losses[0] / losses[1]), "outer_lr": float(lr), "meta_grad_norm": float(gradient.norm())}
        history.steps.append(metrics)
        if on_step is not None:
            on_step(step + 1, metrics)
        if checkpoint is not None and _due(step + 1, config.meta_steps, checkpoint_every):
            checkpoint(step + 1, {"step": step + 1, "theta": learner.flat(), "optimizer": opt.state_dict(),
                                  "scheduler": sched.state_dict(), "loss": metrics["loss"]})
    history.seconds = time.perf_counter() - started
    return history


def multitask_train(
    learner: EpisodeLearner,
    pools: Sequence[LabelPool],
    config: MetaConfig,
    runtime: Any = SINGLE_PROCESS,
    *,
    seed: int = 0,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    resume: dict[str, Any] | None = None,
    checkpoint: Checkpoint | None = None,
    checkpoint_every: int | None = None,
) -> TrainHistory:
    """The non-episodic baseline: ordinary supervised training on the same source data,
    one cosine head per source task (prototype-initialised over all its labels), Adam.
    Each rank draws its own batch; gradients are averaged over ranks."""
    history = TrainHistory()
    started = time.perf_counter()
    steps = multitask_steps(config)
    lr = config.multitask_lr or config.inner_lr
    rng0 = random.Random(f"multitask-heads:{seed}")
    heads = []
    for pool in pools:
        init = [(ex, c) for c, lab in enumerate(pool.labels) for ex in rng0.sample(pool.by_label[lab], min(16, len(pool.by_label[lab])))]
        heads.append(learner.prototype_head(init, len(pool.labels)))
    params = [*learner.params, *heads]
    opt = torch.optim.Adam(params, lr=lr)
    first = 0
    if resume is not None:
        learner.load_flat(resume["theta"])
        with torch.no_grad():
            for head, saved in zip(heads, resume["heads"], strict=True):
                head.copy_(saved)
        opt.load_state_dict(resume["optimizer"])
        first = int(resume["step"])
    weights = [sum(len(v) for v in p.by_label.values()) for p in pools]
    examples = [[(ex, c) for c, lab in enumerate(p.labels) for ex in p.by_label[lab]] for p in pools]
    for step in range(first, steps):
        rng = random.Random(f"multitask:{seed}:{step}:{runtime.process_index}")
        k = rng.choices(range(len(pools)), weights=weights)[0]
        batch = rng.sample(examples[k], min(config.multitask_batch_size, len(examples[k])))
        loss = learner.loss(batch, heads[k])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if runtime.num_processes > 1:
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
            flat = runtime.all_reduce(flat, op="mean")
            offset = 0
            for p in params:
                p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
                offset += p.numel()
        opt.step()
        metrics = {"loss": float(loss.detach())}
        history.steps.append(metrics)
        if on_step is not None:
            on_step(step + 1, metrics)
        if checkpoint is not None and _due(step + 1, steps, checkpoint_every):
            checkpoint(step + 1, {"step": step + 1, "theta": learner.flat(), "optimizer": opt.state_dict(),
                                  "heads": [h.detach().clone() for h in heads], "loss": metrics["loss"]})
    opt.zero_grad(set_to_none=True)
    history.seconds = time.perf_counter() - started
    return history


def multitask_steps(config: MetaConfig) -> int:
    """Steps of the multi-task baseline (default: as many as meta-training's episodes)."""
    return config.multitask_steps if config.multitask_steps is not None else config.meta_steps * config.meta_batch_size


@dataclass
class EpisodeScores:
    """Query accuracy of each episode (in episode order) from one start."""

    accuracies: list[float]
    seconds: float

    def summary(self) -> dict[str, float]:
        mean, ci = mean_ci95(self.accuracies)
        return {"accuracy": mean, "ci95": ci, "episodes": len(self.accuracies)}


def meta_test(
    learner: EpisodeLearner,
    start: torch.Tensor,
    sampler: EpisodeSampler,
    episodes: int,
    *,
    steps: int,
    lr: float,
    optimizer: Literal["sgd", "adam"] = "adam",
    batch_size: int | None = None,
    runtime: Any = SINGLE_PROCESS,
    seed: int = 0,
    contrastive: ContrastiveAdaptation | None = None,
) -> EpisodeScores:
    """Adapt from ``start`` to each episode's support set for ``steps`` steps and score its
    query set: fine-tuning through the prototype-initialised cosine head, or with
    ``contrastive`` its loss on the support embeddings and then its head fitted on them.
    Episodes are dealt to ranks; the scores of all ranks are gathered."""
    started = time.perf_counter()
    mine: dict[int, float] = {}
    for index in range(runtime.process_index, episodes, runtime.num_processes):
        learner.load_flat(start)
        episode = sampler.episode(index)
        rng = random.Random(f"test:{seed}:{index}")
        if contrastive is None:
            head = learner.prototype_head(episode.support, episode.ways)
            if steps:
                learner.adapt(list(episode.support), head, steps=steps, lr=lr, optimizer=optimizer,
                              batch_size=batch_size, rng=rng)
            mine[index] = learner.accuracy(episode.query, head)
        else:
            if steps:
                learner.adapt_contrastive(list(episode.support), contrastive, steps=steps, lr=lr,
                                          optimizer=optimizer, batch_size=batch_size, rng=rng)
            mine[index] = learner.head_accuracy(episode.query, learner.fit_head(episode.support, contrastive))
    learner.load_flat(start)
    merged: dict[int, float] = {}
    for part in runtime.all_gather_object(mine):
        merged.update(part)
    return EpisodeScores([merged[i] for i in range(episodes)], time.perf_counter() - started)
