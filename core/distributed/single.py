"""One process, no process group: collectives are this process's own values."""

from __future__ import annotations

from typing import Any

import torch

from tuneforge.distributed.runtime import Runtime


class SingleProcessRuntime(Runtime):
    """A run in one process (CPU or one GPU). Nothing is communicated."""

    def _reduce(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        return tensor.clone()

    def broadcast_object(self, obj: Any) -> Any:
        return obj

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj]
