"""The object inside the wrappers that distribution puts around a model or a scheduler."""

from __future__ import annotations

from typing import Any

import torch


def unwrap(obj: Any) -> Any:
    """The bare model inside DDP / DeepSpeed-engine / ``torch.compile`` wrappers, or the
    scheduler inside Accelerate's scheduler wrapper; anything else as it is."""
    if not isinstance(obj, torch.nn.Module):
        inner = getattr(obj, "scheduler", None)
        return inner if isinstance(inner, torch.optim.lr_scheduler.LRScheduler) else obj
    while True:
        module = getattr(obj, "module", None)
        if not isinstance(module, torch.nn.Module):
            module = getattr(obj, "_orig_mod", None)
        if not isinstance(module, torch.nn.Module):
            return obj
        obj = module
