"""DDP: one process per device (or per CPU rank with gloo), gradients all-reduced by Accelerate."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from tuneforge.distributed.runtime import Runtime


class DDPRuntime(Runtime):
    """Data-parallel ranks started by a launcher (``torchrun``, ``accelerate launch``, ``--nproc``)."""

    accelerate_types: ClassVar[tuple[str, ...]] = ("MULTI_CPU", "MULTI_GPU")

    def _accelerator_options(self) -> dict[str, Any]:
        # cpu=True selects MULTI_CPU + gloo on a machine without CUDA; without it every rank
        # would run alone, unsynchronised.
        return {"cpu": not torch.cuda.is_available(), "kwargs_handlers": [self._process_group_options()]}
