"""DeepSpeed ZeRO through Accelerate: the engine owns backward, clipping and the step.

Accelerate's ``backward()`` under DeepSpeed would also run ``engine.step()`` right away,
before the loop has seen the loss; here :meth:`DeepSpeedRuntime.backward` only
back-propagates and :meth:`DeepSpeedRuntime.optimizer_step` runs the engine's step, so the
loop's non-finite checks come first as under every other strategy.

On CPU, ``PartialState`` initialises DeepSpeed's comm with gloo and counts the ranks only
when it gets an explicit backend (without one it sets ``num_processes = 1`` although
DeepSpeed has 2 ranks, which was seen to give every rank the whole dataset).
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any, ClassVar

import torch

from tuneforge.config import RunConfig
from tuneforge.distributed.launch_env import LAUNCHER_DEEPSPEED_ENV, free_port, truthy
from tuneforge.distributed.runtime import Runtime, StepOutcome
from tuneforge.distributed.strategy import Strategy
from tuneforge.errors import DistributedError, TrainingError

log = logging.getLogger("tuneforge")


class DeepSpeedRuntime(Runtime):
    """ZeRO stage 0-3 with optional CPU offload, configured by ``strategy.deepspeed_config``."""

    accelerate_types: ClassVar[tuple[str, ...]] = ("DEEPSPEED",)

    def __init__(self, config: RunConfig, strategy: Strategy) -> None:
        self._engine: Any = None  # the DeepSpeed engine, after prepare
        super().__init__(config, strategy)

    def _accelerator_options(self) -> dict[str, Any]:
        from accelerate.utils import DeepSpeedPlugin

        _prepare_environment()
        s, t = self.strategy, self.config.training
        assert s.deepspeed_config is not None
        stage = s.zero_stage or 0
        plugin = DeepSpeedPlugin(
            hf_ds_config=copy.deepcopy(s.deepspeed_config),
            gradient_accumulation_steps=t.gradient_accumulation_steps,
            gradient_clipping=float(t.max_grad_norm) if t.max_grad_norm is not None else 0.0,
            zero_stage=stage,
            zero3_init_flag=stage == 3,
            zero3_save_16bit_model=True,
        )
        # An explicit backend makes PartialState count DeepSpeed's ranks on CPU too.
        return {"deepspeed_plugin": plugin, "kwargs_handlers": [self._process_group_options()]}

    @property
    def engine(self) -> Any:
        """The DeepSpeed engine that :meth:`prepare` made of the model."""
        if self._engine is None:
            raise DistributedError("DeepSpeed: prepare() the model before backward() or optimizer_step()")
        return self._engine

    def prepare(self, *objects: Any) -> tuple[Any, ...]:
        self._fill_bucket_sizes(objects)
        prepared = super().prepare(*objects)
        if self.accelerator.deepspeed_engine_wrapped is not None:
            self._engine = self.accelerator.deepspeed_engine_wrapped.engine
        return prepared

    def prepare_frozen(self, model: torch.nn.Module) -> torch.nn.Module:
        """An inference engine from the run's DeepSpeed config without optimizer, as TRL's
        ``prepare_deepspeed``: ZeRO-3 shards the frozen model like the policy; under ZeRO-1/2 each
        rank holds it whole (stage 0). Call it after :meth:`prepare` (bucket sizes are filled then)."""
        import deepspeed

        model.requires_grad_(False)
        model.eval()
        ds = copy.deepcopy(self.accelerator.state.deepspeed_plugin.deepspeed_config)
        ds.pop("optimizer", None)
        ds.pop("scheduler", None)
        zero = ds.setdefault("zero_optimization", {})
        zero.pop("offload_optimizer", None)
        if int(zero.get("stage", 0)) != 3:
            zero["stage"] = 0
        engine, *_ = deepspeed.initialize(model=model, config=ds)
        engine.eval()
        return engine  # type: ignore[no-any-return]

    def _fill_bucket_sizes(self, objects: tuple[Any, ...]) -> None:
        """Accelerate derives ZeRO bucket sizes from ``model.config.hidden_size``; a model
        without one gets DeepSpeed's own defaults instead of an error."""
        model = next((o for o in objects if isinstance(o, torch.nn.Module)), None)
        config = getattr(model, "config", None)
        if model is None or hasattr(config, "hidden_size") or hasattr(config, "hidden_sizes"):
            return
        ds = self.accelerator.state.deepspeed_plugin.deepspeed_config
        zero = ds.setdefault("zero_optimization", {})
        defaults = {"reduce_bucket_size": 500_000_000, "stage3_prefetch_bucket_size": 50_000_000,
                    "stage3_param_persistence_threshold": 100_000}
        for key, value in defaults.items():
            if zero.get(key) == "auto":
                zero[key] = value

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.set_gradient_accumulation_boundary(is_boundary=self.sync_gradients)
        self.engine.backward(loss)  # divides by gradient_accumulation_steps itself

    def clip_grad_norm(self, model: torch.nn.Module, max_norm: float | None) -> float | None:
        """None: the engine clips inside its step (``gradient_clipping``) and
        :meth:`optimizer_step` reports the norm."""
        return None

    def optimizer_step(
        self, model: torch.nn.Module, optimizer: Any, max_norm: float | None, *, discard: bool = False
    ) -> StepOutcome:
        engine = self.engine
        engine.step()  # clips, checks for inf/nan (skipping the update), steps and zeroes grads
        applied = bool(engine.was_step_applied())
        raw = engine.get_global_grad_norm()
        norm = None if raw is None else float(raw.item() if hasattr(raw, "item") else raw)
        if discard and applied:
            raise TrainingError(
                "the loss was not finite but DeepSpeed found finite gradients and applied the step; "
                "the update cannot be undone. Lower training.lr or enable training.max_grad_norm."
            )
        loss_scaling = bool(self.strategy.deepspeed_config and
                            self.strategy.deepspeed_config.get("fp16", {}).get("enabled"))
        nonfinite = discard or (not applied and not loss_scaling)
        return StepOutcome(applied=applied, nonfinite=nonfinite, grad_norm=norm)

    def load_state(self, directory: Path, world_size: int | None = None) -> None:
        """A ZeRO checkpoint is partitioned per rank and loads only at its own world size."""
        if world_size is not None and world_size != self.num_processes:
            raise DistributedError(
                f"checkpoint {directory} holds DeepSpeed ZeRO state partitioned over {world_size} processes; "
                f"this run has {self.num_processes}. Resume it with {world_size} processes, or start a new run "
                f"from its weights: python {directory}/zero_to_fp32.py {directory} <out_dir> writes a full "
                "fp32 state dict."
            )
        super().load_state(directory, world_size)


def _prepare_environment() -> None:
    """The process environment DeepSpeed needs before Accelerate starts it."""
    for name in LAUNCHER_DEEPSPEED_ENV:  # already folded into the strategy's DeepSpeed config
        os.environ.pop(name, None)
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true":
        log.info("ignoring ACCELERATE_USE_CPU for DeepSpeed (it would silently disable DeepSpeed)")
    os.environ["ACCELERATE_USE_CPU"] = "false"
    if "LOCAL_RANK" not in os.environ:  # one process, no launcher: a world of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    if not torch.cuda.is_available() and not truthy(os.environ.get("TUNEFORGE_DEEPSPEED_SHM")):
        _skip_deepspeed_shm_op()


def _skip_deepspeed_shm_op() -> None:
    """DeepSpeed's CPU accelerator JIT-compiles a shared-memory all-reduce op when its comm
    starts (minutes on a busy machine, and it needs a C++ toolchain); gloo runs the same
    collectives, so the op is marked unavailable. ``TUNEFORGE_DEEPSPEED_SHM=1`` keeps it."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
