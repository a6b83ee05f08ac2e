"""The one evaluation pass: the task's ``evaluation_step`` over a loader, outputs gathered and
concatenated in feature order. Training-time evaluation (:func:`tuneforge.loop.evaluate`,
every rank) and ``tuneforge evaluate``/``predict`` (:mod:`tuneforge.inference`, one process)
both run it."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from tuneforge.distributed import to_numpy
from tuneforge.tasks import Task


def collect_outputs(
    model: torch.nn.Module,
    task: Task,
    loader: Iterable[dict[str, Any]],
    *,
    gather: Callable[[Any], Any] | None = None,
    device: torch.device | None = None,
    on_batch: Callable[[], None] | None = None,
) -> dict[str, np.ndarray]:
    """Per-feature outputs of ``task.evaluation_step`` over ``loader``, in eval mode and without
    gradients (the model's mode is restored). ``gather`` collects a batch's outputs from all
    ranks (without duplicates); ``device``: where to move each batch first."""
    was_training = model.training
    model.eval()
    chunks: dict[str, list[np.ndarray]] = defaultdict(list)
    with torch.no_grad():
        for batch in loader:
            if device is not None:
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            out = task.evaluation_step(model, batch)
            if gather is not None:
                out = gather(out)
            for key, value in to_numpy(out).items():
                chunks[key].append(value)
            if on_batch is not None:
                on_batch()
    model.train(was_training)
    return {k: concat_outputs(v) for k, v in chunks.items()}


def concat_outputs(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate along the batch dim, padding sequence dims with -100 to the widest."""
    if parts[0].ndim > 1:
        width = max(p.shape[1] for p in parts)
        parts = [
            np.pad(p, [(0, 0), (0, width - p.shape[1])] + [(0, 0)] * (p.ndim - 2), constant_values=-100)
            for p in parts
        ]
    return np.concatenate(parts, axis=0)
