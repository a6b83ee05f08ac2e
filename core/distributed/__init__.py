"""The one package that talks to Accelerate (and, through it, DeepSpeed); both are imported
lazily, when a Runtime is built.

* :mod:`.launch_env`: what the launcher announced (world size, a free port).
* :mod:`.strategy`: :func:`resolve_strategy`, single / DDP / DeepSpeed before any process group.
* :mod:`.deepspeed_config`: the DeepSpeed JSON of a run.
* :mod:`.runtime`: :class:`Runtime`, what the loop talks to; one subclass per strategy in
  :mod:`.single`, :mod:`.ddp` and :mod:`.deepspeed`, picked by :func:`create_runtime`.
* :mod:`.collectives` and :mod:`.wrappers`: helpers for code without a Runtime (task plugins).
"""

from __future__ import annotations

from tuneforge.config import RunConfig
from tuneforge.distributed.collectives import any_rank, world_size
from tuneforge.distributed.ddp import DDPRuntime
from tuneforge.distributed.deepspeed import DeepSpeedRuntime
from tuneforge.distributed.deepspeed_config import build_deepspeed_config
from tuneforge.distributed.launch_env import free_port, launched_world_size
from tuneforge.distributed.runtime import Runtime, StepOutcome, to_numpy
from tuneforge.distributed.single import SingleProcessRuntime
from tuneforge.distributed.strategy import Strategy, resolve_strategy
from tuneforge.distributed.wrappers import unwrap

_RUNTIMES: dict[str, type[Runtime]] = {
    "single": SingleProcessRuntime,
    "ddp": DDPRuntime,
    "deepspeed": DeepSpeedRuntime,
}


def create_runtime(config: RunConfig, strategy: Strategy | None = None) -> Runtime:
    """The Runtime of ``strategy`` (resolved from ``config`` and the environment when None);
    this starts the process group."""
    strategy = strategy or resolve_strategy(config)
    return _RUNTIMES[strategy.kind](config, strategy)


__all__ = [
    "DDPRuntime",
    "DeepSpeedRuntime",
    "Runtime",
    "SingleProcessRuntime",
    "StepOutcome",
    "Strategy",
    "any_rank",
    "build_deepspeed_config",
    "create_runtime",
    "free_port",
    "launched_world_size",
    "resolve_strategy",
    "to_numpy",
    "unwrap",
    "world_size",
]
