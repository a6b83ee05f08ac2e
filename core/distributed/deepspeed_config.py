"""The DeepSpeed JSON of a run: generated from the run config, or a user's JSON merged with it.

:func:`build_deepspeed_config` fills a user JSON's ``"auto"`` and missing values from the run
config, adopts its ZeRO stage/offload where the ``distributed:`` section left them at the
default, and lists every value that contradicts the run config. No DeepSpeed import.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from tuneforge.config import RunConfig
from tuneforge.dotted import MISSING, get_dotted, set_dotted
from tuneforge.errors import ConfigError

_OFFLOAD_KEYS = (("zero_optimization.offload_optimizer.device", "offload_optimizer"),
                 ("zero_optimization.offload_param.device", "offload_params"))


def build_deepspeed_config(
    config: RunConfig,
    world_size: int,
    zero_stage: int,
    offload_optimizer: bool,
    offload_params: bool,
    *,
    json_path: str | None = None,
    has_cuda: bool | None = None,
) -> tuple[dict[str, Any], int, bool, bool, list[str]]:
    """The DeepSpeed config of a run: ``(config, stage, offload_opt, offload_params, conflicts)``.

    Without ``json_path`` it is generated from the run config. With one, the JSON is
    the base: its ``"auto"`` and missing values are filled from the run config, its
    ZeRO stage/offload are adopted where the ``distributed:`` section left them at the
    default, and every value that contradicts the run config is listed in ``conflicts``.
    An ``optimizer`` section must describe the same AdamW as ``training.*`` and is then
    dropped (tuneforge builds AdamW and steps the LR schedule itself); a ``scheduler``
    section is a conflict.
    """
    cuda = torch.cuda.is_available() if has_cuda is None else has_cuda
    zero: dict[str, Any] = {
        "zero_stage": zero_stage, "offload_optimizer": offload_optimizer, "offload_params": offload_params,
    }
    user: dict[str, Any] = {}
    if json_path is not None:
        user = _read_json(Path(json_path))
        _adopt_json_zero(user, config.distributed.model_fields_set, zero)
    conflicts: list[str] = []
    result = _merge(user, _generated(cuda), _wanted(config, world_size, zero), conflicts)
    conflicts += _drop_optimizer_sections(result, config)
    _drop_unused_offload(result)
    return result, zero["zero_stage"], zero["offload_optimizer"], zero["offload_params"], conflicts


def values_agree(a: Any, b: Any) -> bool:
    """Equal as a JSON value is meant: numbers within rounding, booleans by name, lists item by item."""
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(values_agree(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return str(a).lower() == str(b).lower()
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        user = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"distributed.deepspeed_config: file '{path}' does not exist") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"distributed.deepspeed_config '{path}': not valid JSON: {exc}") from None
    if not isinstance(user, dict):
        raise ConfigError(f"distributed.deepspeed_config '{path}': the top level must be a JSON object")
    return user


def _adopt_json_zero(user: dict[str, Any], explicit: set[str], zero: dict[str, Any]) -> None:
    """The JSON's ZeRO stage and offload, where the ``distributed:`` section did not set them."""
    stage = get_dotted(user, "zero_optimization.stage", MISSING)
    if stage not in (MISSING, "auto") and "zero_stage" not in explicit:
        zero["zero_stage"] = int(stage)
    for key, name in _OFFLOAD_KEYS:
        value = get_dotted(user, key, MISSING)
        if value not in (MISSING, "auto") and name not in explicit:
            zero[name] = str(value).lower() not in ("none", "")


def _wanted(config: RunConfig, world_size: int, zero: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    """The values the run config fixes, each with the setting it comes from (for conflicts)."""
    t = config.training
    mp = t.mixed_precision
    clip = float(t.max_grad_norm) if t.max_grad_norm is not None else 0.0
    total = t.batch_size * t.gradient_accumulation_steps * world_size
    stage, off_opt, off_par = zero["zero_stage"], zero["offload_optimizer"], zero["offload_params"]
    return {
        "train_micro_batch_size_per_gpu": (t.batch_size, f"training.batch_size={t.batch_size}"),
        "gradient_accumulation_steps": (t.gradient_accumulation_steps,
                                        f"training.gradient_accumulation_steps={t.gradient_accumulation_steps}"),
        "train_batch_size": (total, f"training.batch_size x gradient_accumulation_steps x {world_size} processes = "
                                    f"{total}"),
        "gradient_clipping": (clip, f"training.max_grad_norm={t.max_grad_norm}"),
        "bf16.enabled": (mp == "bf16", f"training.mixed_precision={mp}"),
        "fp16.enabled": (mp == "fp16", f"training.mixed_precision={mp}"),
        "zero_optimization.stage": (stage, f"distributed.zero_stage={stage}"),
        "zero_optimization.offload_optimizer.device": (
            "cpu" if off_opt else "none", f"distributed.offload_optimizer={off_opt}"),
        "zero_optimization.offload_param.device": (
            "cpu" if off_par else "none", f"distributed.offload_params={off_par}"),
    }


def _generated(cuda: bool) -> dict[str, Any]:
    """Defaults tuneforge adds where the JSON says nothing (or ``"auto"``)."""
    return {
        "zero_optimization": {
            "contiguous_gradients": True,
            "overlap_comm": cuda,
            "reduce_bucket_size": "auto",
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_gather_16bit_weights_on_model_save": True,
            "offload_optimizer": {"pin_memory": cuda},
            "offload_param": {"pin_memory": cuda},
        },
        "fp16": {"loss_scale": 0, "initial_scale_power": 16},
        "zero_allow_untested_optimizer": True,
        # On a GPU, an offloaded optimizer is DeepSpeed's CPUAdam (the fast path); on a CPU-only
        # machine tuneforge's torch AdamW already runs on CPU and no C++ op needs building.
        "zero_force_ds_cpu_optimizer": cuda,
        "wall_clock_breakdown": False,
    }


def _merge(
    user: dict[str, Any], generated: dict[str, Any], wanted: dict[str, tuple[Any, str]], conflicts: list[str]
) -> dict[str, Any]:
    result = copy.deepcopy(user)
    for key, value in _flatten(generated):
        if get_dotted(result, key, MISSING) in (MISSING, "auto"):
            set_dotted(result, key, value)
    for key, (value, source) in wanted.items():
        have = get_dotted(result, key, MISSING)
        if have in (MISSING, "auto"):
            set_dotted(result, key, value)
        elif not values_agree(have, value):
            if key.startswith("zero_optimization.offload") and str(have).lower() in ("cpu", "nvme") and value != "none":
                continue  # nvme vs cpu: both are "offload on"
            conflicts.append(f"{key} = {have!r} but {source}")
    return result


def _drop_optimizer_sections(result: dict[str, Any], config: RunConfig) -> list[str]:
    """Remove ``optimizer`` (after checking it is training's AdamW) and ``scheduler``; the conflicts."""
    t = config.training
    conflicts = []
    optimizer = result.pop("optimizer", None)
    if optimizer is not None:
        kind = str(optimizer.get("type", "")).lower()
        if kind not in ("adam", "adamw"):
            conflicts.append(f"optimizer.type = {optimizer.get('type')!r}: tuneforge trains with AdamW (training.lr, "
                             "betas, eps, weight_decay); remove the optimizer section or make it AdamW")
        params = optimizer.get("params", {}) or {}
        for key, value in (("lr", t.lr), ("betas", list(t.betas)), ("eps", t.eps), ("weight_decay", t.weight_decay)):
            have = params.get(key, "auto")
            if have != "auto" and not values_agree(have, value):
                conflicts.append(f"optimizer.params.{key} = {have!r} but training.{key}={value}")
    if result.pop("scheduler", None) is not None:
        conflicts.append("a scheduler section: tuneforge steps the LR schedule itself from training.scheduler, "
                         "warmup_steps and warmup_ratio; remove the section and set those keys instead")
    return conflicts


def _drop_unused_offload(result: dict[str, Any]) -> None:
    zero = result.get("zero_optimization", {})
    if int(zero.get("stage", 0)) != 3:
        zero.pop("offload_param", None)
    if zero.get("offload_optimizer", {}).get("device") == "none":
        zero.pop("offload_optimizer", None)
    if zero.get("offload_param", {}).get("device") == "none":
        zero.pop("offload_param", None)


def _flatten(node: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in node.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
