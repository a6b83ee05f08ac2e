""":func:`resolve_strategy`: what a run is, decided before any process group exists.

``single``, ``ddp`` or ``deepspeed`` (ZeRO stage, offload, the full DeepSpeed config), from
the ``distributed:`` section, the launcher's environment and an optional DeepSpeed JSON;
every disagreement between them is reported as one error. Cheap: no torch.distributed,
no Accelerate.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from tuneforge.config import RunConfig
from tuneforge.distributed.deepspeed_config import build_deepspeed_config, values_agree
from tuneforge.distributed.launch_env import launched_world_size, refuse_simple_cpu_launcher, truthy
from tuneforge.errors import DistributedError


@dataclass(frozen=True)
class Strategy:
    """The resolved distribution of one run (see :func:`resolve_strategy`)."""

    kind: str  # single | ddp | deepspeed
    world_size: int
    backend: str  # gloo | nccl
    zero_stage: int | None = None
    offload_optimizer: bool = False
    offload_params: bool = False
    deepspeed_config: dict[str, Any] | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        if self.kind != "deepspeed":
            return f"{self.kind} x{self.world_size} ({self.backend})"
        offload = [n for n, on in (("optimizer", self.offload_optimizer), ("params", self.offload_params)) if on]
        extra = f", offload {'+'.join(offload)}" if offload else ""
        return f"deepspeed ZeRO-{self.zero_stage} x{self.world_size} ({self.backend}{extra})"


def resolve_strategy(config: RunConfig, env: Mapping[str, str] | None = None) -> Strategy:
    """Decide single/DDP/DeepSpeed from the ``distributed:`` section and the launcher.

    The run config is the source of truth. Settings an ``accelerate launch`` config
    passes through the environment (``--use_deepspeed``, ``--zero_stage``, offload,
    ``--deepspeed_config_file``) fill what the run config leaves at its default and
    are errors where the run config says otherwise.
    """
    env = os.environ if env is None else env
    world = launched_world_size(env)
    has_cuda = torch.cuda.is_available()
    refuse_simple_cpu_launcher(env)
    kind = _kind(config.distributed.strategy, truthy(env.get("ACCELERATE_USE_DEEPSPEED")), world)
    backend = _backend(config.distributed.backend, has_cuda)
    if kind != "deepspeed":
        return Strategy(kind, world, backend)
    return _deepspeed_strategy(config, env, world, backend, has_cuda)


def _kind(strategy: str, launcher_deepspeed: bool, world: int) -> str:
    if strategy == "deepspeed" or (strategy == "auto" and launcher_deepspeed):
        return "deepspeed"
    if strategy == "ddp" and launcher_deepspeed:
        raise DistributedError(
            "the launcher asked for DeepSpeed (accelerate launch --use_deepspeed, or an accelerate config with "
            "distributed_type: DEEPSPEED) but distributed.strategy is 'ddp'; set distributed.strategy=deepspeed "
            "(or auto), or launch without DeepSpeed"
        )
    return "ddp" if world > 1 else "single"


def _backend(backend: str, has_cuda: bool) -> str:
    if backend == "auto":
        return "nccl" if has_cuda else "gloo"
    if backend == "nccl" and not has_cuda:
        raise DistributedError("distributed.backend=nccl needs CUDA GPUs; on CPU use backend: gloo (or auto)")
    return backend


def _deepspeed_strategy(
    config: RunConfig, env: Mapping[str, str], world: int, backend: str, has_cuda: bool
) -> Strategy:
    """DeepSpeed: the launcher's settings, then a DeepSpeed JSON, then the run config."""
    problems: list[str] = []
    zero = _launcher_zero_settings(config, env, problems)
    problems += _launcher_training_conflicts(config, env)
    json_path = config.distributed.deepspeed_config or env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") or None
    if json_path == "none":
        json_path = None
    ds_config, stage, off_opt, off_par, conflicts = build_deepspeed_config(
        config, world, zero["zero_stage"], zero["offload_optimizer"], zero["offload_params"],
        json_path=json_path, has_cuda=has_cuda,
    )
    problems += conflicts
    if off_par and stage != 3:
        problems.append(f"parameter offload (distributed.offload_params) needs ZeRO stage 3, not {stage}")
    if problems:
        where = f" (DeepSpeed config {json_path})" if json_path else ""
        raise DistributedError(
            f"DeepSpeed settings conflict{where}:\n  - " + "\n  - ".join(problems)
            + "\nMake the run config and the DeepSpeed JSON / launcher agree (or drop the key from one of them)."
        )
    return Strategy("deepspeed", world, backend, stage, off_opt, off_par, ds_config)


def _launcher_zero_settings(config: RunConfig, env: Mapping[str, str], problems: list[str]) -> dict[str, Any]:
    """ZeRO stage and offload: the launcher's where the run config left them at the default;
    where both set one and disagree, a line in ``problems``."""
    d = config.distributed
    explicit = d.model_fields_set
    settings: dict[str, Any] = {
        "zero_stage": d.zero_stage, "offload_optimizer": d.offload_optimizer, "offload_params": d.offload_params,
    }
    launched: list[tuple[str, Any, str]] = []  # (key, the launcher's value, how the launcher said it)
    stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    if stage is not None:
        launched.append(("zero_stage", int(stage), f"ZeRO stage {stage}"))
    for env_name, key in (("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "offload_optimizer"),
                          ("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "offload_params")):
        device = env.get(env_name)
        if device is not None:
            launched.append((key, device.lower() not in ("none", ""), f"{env_name}={device}"))
    for key, value, told in launched:
        if key not in explicit:
            settings[key] = value
        elif value != settings[key]:
            problems.append(f"the launcher sets {told} but distributed.{key}={settings[key]}")
    return settings


def _launcher_training_conflicts(config: RunConfig, env: Mapping[str, str]) -> list[str]:
    """Accumulation and clipping the launcher passes must be the ``training:`` values."""
    t = config.training
    problems = []
    launcher_gas = env.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS")
    if launcher_gas not in (None, "auto") and int(launcher_gas) != t.gradient_accumulation_steps:
        problems.append(f"the launcher sets gradient_accumulation_steps={launcher_gas} but "
                        f"training.gradient_accumulation_steps={t.gradient_accumulation_steps}")
    launcher_clip = env.get("ACCELERATE_GRADIENT_CLIPPING")
    if launcher_clip not in (None, "auto", "none") and not values_agree(float(launcher_clip), t.max_grad_norm or 0.0):
        problems.append(f"the launcher sets gradient_clipping={launcher_clip} but training.max_grad_norm={t.max_grad_norm}")
    return problems
