"""Collectives on the process group a :class:`~tuneforge.distributed.Runtime` set up, for code
that has no Runtime at hand (a task's ``evaluation_step``). Every rank must call them together."""

from __future__ import annotations

import torch


def world_size() -> int:
    """Processes in the default process group (1 when there is none)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """True if ``flag`` is true on any rank. ``device``: where the process group's backend
    reduces (the Runtime's device; CPU for gloo)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)
