"""The one module that talks to Accelerate (and, through it, DeepSpeed).

:class:`Runtime` is the distribution strategy the loop talks to: process setup,
``prepare``, backward, the optimizer step, gathering, state save/load and export.
The loop never branches on single process vs DDP vs DeepSpeed.

:func:`resolve_strategy` decides, before any process group exists, what a run is:
``single``, ``ddp`` or ``deepspeed`` (ZeRO stage, offload, the full DeepSpeed config),
from the ``distributed:`` section, the launcher's environment and an optional
DeepSpeed JSON; every disagreement between them is reported as one error.

Launch facts this module handles (accelerate 1.15, read in ``accelerate/state.py``
and ``accelerate/commands/launch.py``):

* ``PartialState`` only creates a process group when it finds a device backend:
  with ``LOCAL_RANK`` set and no CUDA it picks none, so a plain ``Accelerator()``
  under ``torchrun``/``accelerate launch --multi_gpu`` runs every process as an
  unsynchronised single process. DDP on CPU therefore passes ``cpu=True`` (which
  selects ``MULTI_CPU`` + gloo and shards the data).
* ``cpu=True`` (or ``ACCELERATE_USE_CPU=true``) makes ``AcceleratorState`` skip its
  DeepSpeed branch, so DeepSpeed would be dropped silently. DeepSpeed on CPU instead
  runs with ``cpu=False`` and an explicit ``InitProcessGroupKwargs(backend="gloo")``:
  ``PartialState`` then initialises DeepSpeed's comm with gloo and counts the ranks
  (without a backend it sets ``num_processes = 1`` although DeepSpeed has 2 ranks,
  which is why DeepSpeed-on-CPU was seen to give every rank the whole dataset).
* ``accelerate launch --cpu`` (or a config with ``distributed_type: MULTI_CPU``) uses
  the *simple* launcher: one Python process, meant to be started by ``mpirun``.
  Without MPI it leaves ``WORLD_SIZE`` unset, so ``--num_processes 2`` starts one
  process; we detect that and refuse with the command that works.
* The world size is checked after setup; a mismatch is a :class:`DistributedError`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneforge.config import RunConfig
from tuneforge.errors import CheckpointError, ConfigError, DistributedError, TrainingError

log = logging.getLogger("tuneforge")

_MPI_WORLD = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def _env_int(env: Mapping[str, str], names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = env.get(name)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                raise DistributedError(f"environment variable {name}={value!r} is not a whole number") from None
    return default


def launched_world_size(env: Mapping[str, str] | None = None) -> int:
    """World size the launcher announced through the environment (1 if none)."""
    return _env_int(os.environ if env is None else env, ("WORLD_SIZE", *_MPI_WORLD), 1)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- what kind of run: resolved before any process group exists ---------------------------


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


def _truthy(value: str | None) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes")


def resolve_strategy(config: RunConfig, env: Mapping[str, str] | None = None) -> Strategy:
    """Decide single/DDP/DeepSpeed from the ``distributed:`` section and the launcher.

    The run config is the source of truth. Settings an ``accelerate launch`` config
    passes through the environment (``--use_deepspeed``, ``--zero_stage``, offload,
    ``--deepspeed_config_file``) fill what the run config leaves at its default and
    are errors where the run config says otherwise. Cheap: no torch.distributed.
    """
    env = os.environ if env is None else env
    d = config.distributed
    explicit = d.model_fields_set
    world = launched_world_size(env)
    has_cuda = torch.cuda.is_available()
    if (
        world == 1
        and env.get("ACCELERATE_USE_CPU", "").lower() == "true"
        and env.get("MASTER_ADDR")
        and "LOCAL_RANK" not in env
    ):
        # accelerate's simple launcher sets MASTER_ADDR only when --num_processes > 1.
        raise DistributedError(
            "`accelerate launch --cpu --num_processes N` (or an accelerate config with distributed_type: "
            "MULTI_CPU) starts ONE process here: that launcher expects mpirun (--mpirun_hostfile). Use "
            "`accelerate launch --multi_gpu --num_processes N` (tuneforge runs the ranks on CPU with gloo), "
            "`torchrun --nproc_per_node N launch/run.py`, or `tuneforge train --nproc N`."
        )
    launcher_ds = _truthy(env.get("ACCELERATE_USE_DEEPSPEED"))
    problems: list[str] = []
    if d.strategy == "deepspeed" or (d.strategy == "auto" and launcher_ds):
        kind = "deepspeed"
    elif d.strategy == "ddp" and launcher_ds:
        raise DistributedError(
            "the launcher asked for DeepSpeed (accelerate launch --use_deepspeed, or an accelerate config with "
            "distributed_type: DEEPSPEED) but distributed.strategy is 'ddp'; set distributed.strategy=deepspeed "
            "(or auto), or launch without DeepSpeed"
        )
    else:
        kind = "ddp" if world > 1 else "single"

    backend = d.backend
    if backend == "auto":
        backend = "nccl" if has_cuda else "gloo"
    elif backend == "nccl" and not has_cuda:
        raise DistributedError("distributed.backend=nccl needs CUDA GPUs; on CPU use backend: gloo (or auto)")
    if kind != "deepspeed":
        return Strategy(kind, world, backend)

    # DeepSpeed: the launcher's settings, then a DeepSpeed JSON, then the run config.
    stage, off_opt, off_par = d.zero_stage, d.offload_optimizer, d.offload_params
    launcher_stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    if launcher_stage is not None:
        if "zero_stage" in explicit and int(launcher_stage) != stage:
            problems.append(f"the launcher sets ZeRO stage {launcher_stage} but distributed.zero_stage={stage}")
        elif "zero_stage" not in explicit:
            stage = int(launcher_stage)
    for env_name, key in (("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "offload_optimizer"),
                          ("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "offload_params")):
        device = env.get(env_name)
        if device is None:
            continue
        wanted = device.lower() not in ("none", "")
        current = off_opt if key == "offload_optimizer" else off_par
        if key in explicit and wanted != current:
            problems.append(f"the launcher sets {env_name}={device} but distributed.{key}={current}")
        elif key not in explicit:
            if key == "offload_optimizer":
                off_opt = wanted
            else:
                off_par = wanted
    t = config.training
    launcher_gas = env.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS")
    if launcher_gas not in (None, "auto") and int(launcher_gas) != t.gradient_accumulation_steps:
        problems.append(f"the launcher sets gradient_accumulation_steps={launcher_gas} but "
                        f"training.gradient_accumulation_steps={t.gradient_accumulation_steps}")
    launcher_clip = env.get("ACCELERATE_GRADIENT_CLIPPING")
    if launcher_clip not in (None, "auto", "none") and not _same(float(launcher_clip), t.max_grad_norm or 0.0):
        problems.append(f"the launcher sets gradient_clipping={launcher_clip} but training.max_grad_norm={t.max_grad_norm}")
    json_path = d.deepspeed_config or env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") or None
    if json_path == "none":
        json_path = None
    ds_config, stage, off_opt, off_par, conflicts = build_deepspeed_config(
        config, world, stage, off_opt, off_par, json_path=json_path, has_cuda=has_cuda
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


_UNSET = object()


def _get_path(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _UNSET
        node = node[part]
    return node


def _set_path(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = cfg
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


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
    t = config.training
    explicit = config.distributed.model_fields_set
    cuda = torch.cuda.is_available() if has_cuda is None else has_cuda
    conflicts: list[str] = []
    user: dict[str, Any] = {}
    if json_path is not None:
        path = Path(json_path)
        try:
            user = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"distributed.deepspeed_config: file '{path}' does not exist") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"distributed.deepspeed_config '{path}': not valid JSON: {exc}") from None
        if not isinstance(user, dict):
            raise ConfigError(f"distributed.deepspeed_config '{path}': the top level must be a JSON object")
        stage_value = _get_path(user, "zero_optimization.stage")
        if stage_value not in (_UNSET, "auto") and "zero_stage" not in explicit:
            zero_stage = int(stage_value)
        for key, name in (("zero_optimization.offload_optimizer.device", "offload_optimizer"),
                          ("zero_optimization.offload_param.device", "offload_params")):
            value = _get_path(user, key)
            if value not in (_UNSET, "auto") and name not in explicit:
                on = str(value).lower() not in ("none", "")
                if name == "offload_optimizer":
                    offload_optimizer = on
                else:
                    offload_params = on

    mp = t.mixed_precision
    clip = float(t.max_grad_norm) if t.max_grad_norm is not None else 0.0
    wanted: dict[str, tuple[Any, str]] = {
        "train_micro_batch_size_per_gpu": (t.batch_size, f"training.batch_size={t.batch_size}"),
        "gradient_accumulation_steps": (t.gradient_accumulation_steps,
                                        f"training.gradient_accumulation_steps={t.gradient_accumulation_steps}"),
        "train_batch_size": (t.batch_size * t.gradient_accumulation_steps * world_size,
                             f"training.batch_size x gradient_accumulation_steps x {world_size} processes = "
                             f"{t.batch_size * t.gradient_accumulation_steps * world_size}"),
        "gradient_clipping": (clip, f"training.max_grad_norm={t.max_grad_norm}"),
        "bf16.enabled": (mp == "bf16", f"training.mixed_precision={mp}"),
        "fp16.enabled": (mp == "fp16", f"training.mixed_precision={mp}"),
        "zero_optimization.stage": (zero_stage, f"distributed.zero_stage={zero_stage}"),
        "zero_optimization.offload_optimizer.device": (
            "cpu" if offload_optimizer else "none", f"distributed.offload_optimizer={offload_optimizer}"),
        "zero_optimization.offload_param.device": (
            "cpu" if offload_params else "none", f"distributed.offload_params={offload_params}"),
    }
    generated: dict[str, Any] = {
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
    result = copy.deepcopy(user)
    for key, value in _flatten(generated):
        if _get_path(result, key) in (_UNSET, "auto"):
            _set_path(result, key, value)
    for key, (value, source) in wanted.items():
        have = _get_path(result, key)
        if have in (_UNSET, "auto"):
            _set_path(result, key, value)
        elif not _same(have, value):
            if key.startswith("zero_optimization.offload") and str(have).lower() in ("cpu", "nvme") and value != "none":
                continue  # nvme vs cpu: both are "offload on"
            conflicts.append(f"{key} = {have!r} but {source}")

    optimizer = result.pop("optimizer", None)
    if optimizer is not None:
        kind = str(optimizer.get("type", "")).lower()
        if kind not in ("adam", "adamw"):
            conflicts.append(f"optimizer.type = {optimizer.get('type')!r}: tuneforge trains with AdamW (training.lr, "
                             "betas, eps, weight_decay); remove the optimizer section or make it AdamW")
        params = optimizer.get("params", {}) or {}
        for key, value in (("lr", t.lr), ("betas", list(t.betas)), ("eps", t.eps), ("weight_decay", t.weight_decay)):
            have = params.get(key, "auto")
            if have != "auto" and not _same(have, value):
                conflicts.append(f"optimizer.params.{key} = {have!r} but training.{key}={value}")
    if result.pop("scheduler", None) is not None:
        conflicts.append("a scheduler section: tuneforge steps the LR schedule itself from training.scheduler, "
                         "warmup_steps and warmup_ratio; remove the section and set those keys instead")
    zero = result.get("zero_optimization", {})
    if int(zero.get("stage", 0)) != 3:
        zero.pop("offload_param", None)
    if zero.get("offload_optimizer", {}).get("device") == "none":
        zero.pop("offload_optimizer", None)
    if zero.get("offload_param", {}).get("device") == "none":
        zero.pop("offload_param", None)
    return result, zero_stage, offload_optimizer, offload_params, conflicts


def _flatten(node: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in node.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return str(a).lower() == str(b).lower()
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


_LAUNCHER_DS_ENV = (
    "ACCELERATE_CONFIG_DS_FIELDS",
    "ACCELERATE_GRADIENT_ACCUMULATION_STEPS",
    "ACCELERATE_GRADIENT_CLIPPING",
    "ACCELERATE_DEEPSPEED_ZERO_STAGE",
    "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE",
    "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE",
    "ACCELERATE_DEEPSPEED_CONFIG_FILE",
    "ACCELERATE_DEEPSPEED_ZERO3_INIT",
    "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL",
)


def _skip_deepspeed_shm_op() -> None:
    """DeepSpeed's CPU accelerator JIT-compiles a shared-memory all-reduce op when its comm
    starts (minutes on a busy machine, and it needs a C++ toolchain); gloo runs the same
    collectives, so the op is marked unavailable. ``TUNEFORGE_DEEPSPEED_SHM=1`` keeps it."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


@dataclass
class StepOutcome:
    """What happened at an optimizer-step boundary (see :meth:`Runtime.optimizer_step`)."""

    applied: bool  # parameters were updated
    nonfinite: bool  # discarded because the loss or the gradients were not finite
    grad_norm: float | None = None  # total gradient norm before clipping, when known


class Runtime:
    """Process group, device placement, and everything distributed, for one run."""

    def __init__(self, config: RunConfig, strategy: Strategy | None = None) -> None:
        from datetime import timedelta

        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs, set_seed

        self.config = config
        t = config.training
        has_cuda = torch.cuda.is_available()
        if t.mixed_precision == "fp16" and not has_cuda:
            raise ConfigError(
                "training.mixed_precision=fp16 needs a CUDA GPU; on CPU use 'bf16' or 'no'"
            )
        self.strategy = strategy or resolve_strategy(config)
        s = self.strategy
        world = s.world_size
        kwargs: dict[str, Any] = {
            "mixed_precision": t.mixed_precision,
            "gradient_accumulation_steps": t.gradient_accumulation_steps,
            "step_scheduler_with_optimizer": False,
        }
        timeout = timedelta(minutes=config.distributed.timeout_minutes)
        if s.kind == "ddp":
            kwargs["cpu"] = not has_cuda  # MULTI_CPU + gloo; without it every rank runs alone
            kwargs["kwargs_handlers"] = [InitProcessGroupKwargs(backend=s.backend, timeout=timeout)]
        elif s.kind == "deepspeed":
            from accelerate.utils import DeepSpeedPlugin

            for name in _LAUNCHER_DS_ENV:  # already folded into s.deepspeed_config
                os.environ.pop(name, None)
            if os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true":
                log.info("ignoring ACCELERATE_USE_CPU for DeepSpeed (it would silently disable DeepSpeed)")
            os.environ["ACCELERATE_USE_CPU"] = "false"
            if "LOCAL_RANK" not in os.environ:  # one process, no launcher: a world of one
                os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
                os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
                os.environ.setdefault("MASTER_PORT", str(free_port()))
            if not has_cuda and not _truthy(os.environ.get("TUNEFORGE_DEEPSPEED_SHM")):
                _skip_deepspeed_shm_op()
            assert s.deepspeed_config is not None
            stage = s.zero_stage or 0
            kwargs["deepspeed_plugin"] = DeepSpeedPlugin(
                hf_ds_config=copy.deepcopy(s.deepspeed_config),
                gradient_accumulation_steps=t.gradient_accumulation_steps,
                gradient_clipping=float(t.max_grad_norm) if t.max_grad_norm is not None else 0.0,
                zero_stage=stage,
                zero3_init_flag=stage == 3,
                zero3_save_16bit_model=True,
            )
            # An explicit backend makes PartialState count DeepSpeed's ranks on CPU too.
            kwargs["kwargs_handlers"] = [InitProcessGroupKwargs(backend=s.backend, timeout=timeout)]
        self.accelerator = Accelerator(**kwargs)
        got = self.accelerator.num_processes
        if got != world:
            raise DistributedError(
                f"the launcher started {world} processes (WORLD_SIZE={world}) but Accelerate set up {got}; "
                "every rank would train on the full data unsynchronised. Launch with "
                "`torchrun --nproc_per_node N launch/run.py`, `accelerate launch --multi_gpu --num_processes N "
                "launch/run.py` or `tuneforge train --nproc N`."
            )
        expected = {"single": None, "ddp": ("MULTI_CPU", "MULTI_GPU"), "deepspeed": ("DEEPSPEED",)}[s.kind]
        if expected and self.kind.upper() not in expected:
            raise DistributedError(
                f"distributed.strategy resolved to {s.describe()} but Accelerate set up '{self.kind}'; "
                "check ACCELERATE_* environment variables left over from another launcher"
            )
        self._engine: Any = None  # the DeepSpeed engine, after prepare
        self._last_outcome: StepOutcome | None = None
        set_seed(t.seed)

    # -- facts -----------------------------------------------------------------------

    @property
    def is_main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    @property
    def num_processes(self) -> int:
        return int(self.accelerator.num_processes)

    @property
    def process_index(self) -> int:
        return int(self.accelerator.process_index)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def kind(self) -> str:
        return str(self.accelerator.distributed_type.value)

    @property
    def sync_gradients(self) -> bool:
        return bool(self.accelerator.sync_gradients)

    @property
    def optimizer_step_was_skipped(self) -> bool:
        """The last optimizer step changed no parameters (loss-scale overflow or non-finite)."""
        if self._last_outcome is not None:
            return not self._last_outcome.applied
        return bool(self.accelerator.optimizer_step_was_skipped)

    @property
    def is_deepspeed(self) -> bool:
        return self.strategy.kind == "deepspeed"

    # -- setup -------------------------------------------------------------------------

    def prepare(self, *objects: Any) -> tuple[Any, ...]:
        if self.is_deepspeed:
            self._fill_bucket_sizes(objects)
        prepared = self.accelerator.prepare(*objects)
        if self.is_deepspeed and self.accelerator.deepspeed_engine_wrapped is not None:
            self._engine = self.accelerator.deepspeed_engine_wrapped.engine
        return prepared if isinstance(prepared, tuple) else (prepared,)

    def prepare_frozen(self, model: torch.nn.Module) -> torch.nn.Module:
        """A model that is only run forward beside the trained one (a task's frozen reference):
        parameters frozen, eval mode, placed like the policy. Single/DDP: on this rank's device
        (with the run's autocast, not wrapped in DDP: it has no gradients to sync). DeepSpeed:
        an inference engine from the run's config without optimizer (ZeRO-3 shards it like the
        policy; under ZeRO-1/2 each rank holds it whole, stage 0), as TRL's ``prepare_deepspeed``.
        Call it after :meth:`prepare` (the ZeRO bucket sizes are filled then)."""
        model.requires_grad_(False)
        model.eval()
        if not self.is_deepspeed:
            return self.accelerator.prepare_model(model, evaluation_mode=True)
        import deepspeed

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

    def register_for_checkpointing(self, *objects: Any) -> None:
        self.accelerator.register_for_checkpointing(*objects)

    # -- training step ---------------------------------------------------------------
    #
    # The loop calls backward() for every micro-batch and optimizer_step() once per
    # accumulation boundary. Under DeepSpeed, Accelerate's backward() would also run
    # engine.step() right away, before the loop has seen the loss; here backward()
    # only back-propagates and optimizer_step() runs the engine's step, so the loop's
    # non-finite checks come first under every strategy.

    def accumulate(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
        return self.accelerator.accumulate(model)

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        return self.accelerator.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        if self._engine is not None:
            self._engine.set_gradient_accumulation_boundary(is_boundary=self.sync_gradients)
            self._engine.backward(loss)  # divides by gradient_accumulation_steps itself
        else:
            self.accelerator.backward(loss)

    def clip_grad_norm(self, model: torch.nn.Module, max_norm: float | None) -> float | None:
        """Clip on optimizer-step boundaries; returns the pre-clip total norm.

        Under DeepSpeed clipping happens inside the engine's step (``gradient_clipping``),
        so this returns None there; :meth:`optimizer_step` reports the norm instead."""
        if max_norm is None or not self.sync_gradients or self._engine is not None:
            return None
        norm = self.accelerator.clip_grad_norm_(model.parameters(), max_norm)
        return None if norm is None else float(norm)

    def optimizer_step(
        self, model: torch.nn.Module, optimizer: Any, max_norm: float | None, *, discard: bool = False
    ) -> StepOutcome:
        """At an accumulation boundary: clip, step (unless gradients are not finite), zero grads.

        ``discard=True`` (the loop saw a non-finite loss) throws the accumulated gradients
        away without updating anything. Same result under every strategy.
        """
        if self._engine is not None:
            outcome = self._deepspeed_step(discard)
        elif discard:
            optimizer.zero_grad(set_to_none=True)
            outcome = StepOutcome(applied=False, nonfinite=True)
        else:
            norm = self.clip_grad_norm(model, max_norm) if max_norm is not None else None
            scaler = self.accelerator.scaler is not None  # fp16 loss scaling skips overflowing steps itself
            if norm is not None and not math.isfinite(norm) and not scaler:
                optimizer.zero_grad(set_to_none=True)
                outcome = StepOutcome(applied=False, nonfinite=True, grad_norm=norm)
            else:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                skipped = bool(self.accelerator.optimizer_step_was_skipped)
                outcome = StepOutcome(applied=not skipped, nonfinite=False, grad_norm=norm)
        self._last_outcome = outcome
        return outcome

    def _deepspeed_step(self, discard: bool) -> StepOutcome:
        engine = self._engine
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

    # -- collectives -----------------------------------------------------------------

    def mean(self, value: torch.Tensor | float) -> float:
        """Mean of a scalar over all ranks."""
        t = torch.as_tensor(value, dtype=torch.float32, device=self.device).detach().reshape(1)
        return float(self.accelerator.reduce(t, reduction="mean").item())

    def all_reduce(self, tensor: torch.Tensor, op: str = "mean") -> torch.Tensor:
        """``tensor`` summed or averaged element-wise over all ranks (e.g. a flat
        parameter-delta vector); returned on this rank's original device."""
        if op not in ("sum", "mean"):
            raise ValueError(f"all_reduce op must be 'sum' or 'mean', got {op!r}")
        if self.num_processes == 1:
            return tensor.clone()
        reduced = self.accelerator.reduce(tensor.detach().to(self.device).clone(), reduction=op)
        return reduced.to(tensor.device)

    def all_true(self, flag: bool) -> bool:
        t = torch.tensor([0.0 if flag else 1.0], device=self.device)
        return float(self.accelerator.reduce(t, reduction="sum").item()) == 0.0

    def gather_for_metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Gather per-example outputs of one batch from all ranks, dropping the samples
        the sampler duplicated to even out the last batch. Sequence outputs are padded
        with -100 across ranks first."""
        padded = {
            k: (self.accelerator.pad_across_processes(v, dim=1, pad_index=-100) if v.dim() > 1 else v)
            for k, v in outputs.items()
        }
        return self.accelerator.gather_for_metrics(padded)

    def broadcast_object(self, obj: Any) -> Any:
        """``obj`` from rank 0 on every rank."""
        if self.num_processes == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        box = [obj]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        if self.num_processes == 1:
            return [obj]
        from accelerate.utils import gather_object

        return list(gather_object([obj]))

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    # -- state -------------------------------------------------------------------------

    def save_state(self, directory: Path) -> None:
        """Model, optimizer, registered objects and RNG states of every rank."""
        self.accelerator.save_state(str(directory), safe_serialization=True)

    def load_state(self, directory: Path, world_size: int | None = None) -> None:
        """Restore what :meth:`save_state` wrote. ``world_size``: processes that wrote it.

        DDP state (one full model/optimizer file) loads at any world size. A DeepSpeed
        ZeRO checkpoint is partitioned per rank and loads only at its own world size."""
        if world_size is not None and world_size != self.num_processes and self.is_deepspeed:
            raise DistributedError(
                f"checkpoint {directory} holds DeepSpeed ZeRO state partitioned over {world_size} processes; "
                f"this run has {self.num_processes}. Resume it with {world_size} processes, or start a new run "
                f"from its weights: python {directory}/zero_to_fp32.py {directory} <out_dir> writes a full "
                "fp32 state dict."
            )
        self.accelerator.load_state(str(directory))
        # Accelerate only logs (INFO) when it cannot restore the RNG states; a resumed run
        # would then drift from the uninterrupted one silently. Make that an error.
        rng_file = Path(directory) / f"random_states_{self.process_index}.pkl"
        if rng_file.is_file():
            from accelerate.utils import load

            try:
                restored = torch.equal(torch.get_rng_state(), load(rng_file)["torch_manual_seed"])
            except Exception as exc:
                raise CheckpointError(f"{rng_file}: random states cannot be read ({type(exc).__name__}: {exc})") from exc
            if not restored:
                raise CheckpointError(f"{rng_file}: random states were not restored; the resumed run would diverge")

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.accelerator.unwrap_model(model)

    def export_model(self, model: torch.nn.Module, directory: Path, tokenizer: Any = None) -> None:
        """Write ``model`` in Hugging Face format (full weights gathered to rank 0)."""
        state_dict = self.accelerator.get_state_dict(model)
        if self.is_main:
            directory.mkdir(parents=True, exist_ok=True)
            unwrapped: Any = self.unwrap(model)
            unwrapped.save_pretrained(str(directory), state_dict=state_dict, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(directory))
        self.barrier()

    def end(self) -> None:
        self.accelerator.end_training()

    @contextlib.contextmanager
    def main_process_first(self) -> Iterator[None]:
        with self.accelerator.main_process_first():
            yield


def to_numpy(outputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy() for k, v in outputs.items()}
