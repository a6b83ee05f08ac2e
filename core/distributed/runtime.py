""":class:`Runtime`: the distribution strategy the loop talks to, and what every strategy shares.

Process setup, ``prepare``, backward, the optimizer step, gathering, state save/load and
export, all through Accelerate. One subclass per strategy (:mod:`.single`, :mod:`.ddp`,
:mod:`.deepspeed`) adds what differs, so no method here asks which strategy it runs;
:func:`tuneforge.distributed.create_runtime` picks the class.

Launch facts the subclasses rely on (accelerate 1.15, read in ``accelerate/state.py``):

* ``PartialState`` only creates a process group when it finds a device backend:
  with ``LOCAL_RANK`` set and no CUDA it picks none, so a plain ``Accelerator()``
  under ``torchrun``/``accelerate launch --multi_gpu`` runs every process as an
  unsynchronised single process. DDP on CPU therefore passes ``cpu=True`` (which
  selects ``MULTI_CPU`` + gloo and shards the data).
* ``cpu=True`` (or ``ACCELERATE_USE_CPU=true``) makes ``AcceleratorState`` skip its
  DeepSpeed branch, so DeepSpeed would be dropped silently. DeepSpeed on CPU instead
  runs with ``cpu=False`` and an explicit ``InitProcessGroupKwargs(backend="gloo")``.
* The world size is checked after setup; a mismatch is a :class:`DistributedError`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from tuneforge.config import RunConfig
from tuneforge.distributed import collectives
from tuneforge.distributed.strategy import Strategy
from tuneforge.distributed.wrappers import unwrap
from tuneforge.errors import CheckpointError, ConfigError, DistributedError


@dataclass
class StepOutcome:
    """What happened at an optimizer-step boundary (see :meth:`Runtime.optimizer_step`)."""

    applied: bool  # parameters were updated
    nonfinite: bool  # discarded because the loss or the gradients were not finite
    grad_norm: float | None = None  # total gradient norm before clipping, when known


class Runtime:
    """Process group, device placement, and everything distributed, for one run."""

    #: Accelerate's distributed types this strategy must end up with (empty: any).
    accelerate_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: RunConfig, strategy: Strategy) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.config = config
        self.strategy = strategy
        t = config.training
        if t.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise ConfigError("training.mixed_precision=fp16 needs a CUDA GPU; on CPU use 'bf16' or 'no'")
        self.accelerator = Accelerator(
            mixed_precision=t.mixed_precision,
            gradient_accumulation_steps=t.gradient_accumulation_steps,
            step_scheduler_with_optimizer=False,
            **self._accelerator_options(),
        )
        self._check_setup()
        set_seed(t.seed)

    def _accelerator_options(self) -> dict[str, Any]:
        """What this strategy adds to ``Accelerator(...)`` (and the process environment it needs)."""
        return {}

    def _process_group_options(self) -> Any:
        """The backend and timeout of the process group, for strategies that start one."""
        from datetime import timedelta

        from accelerate.utils import InitProcessGroupKwargs

        timeout = timedelta(minutes=self.config.distributed.timeout_minutes)
        return InitProcessGroupKwargs(backend=self.strategy.backend, timeout=timeout)

    def _check_setup(self) -> None:
        world = self.strategy.world_size
        got = self.accelerator.num_processes
        if got != world:
            raise DistributedError(
                f"the launcher started {world} processes (WORLD_SIZE={world}) but Accelerate set up {got}; "
                "every rank would train on the full data unsynchronised. Launch with "
                "`torchrun --nproc_per_node N launch/run.py`, `accelerate launch --multi_gpu --num_processes N "
                "launch/run.py` or `tuneforge train --nproc N`."
            )
        if self.accelerate_types and self.kind.upper() not in self.accelerate_types:
            raise DistributedError(
                f"distributed.strategy resolved to {self.strategy.describe()} but Accelerate set up '{self.kind}'; "
                "check ACCELERATE_* environment variables left over from another launcher"
            )

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

    # -- setup -------------------------------------------------------------------------

    def prepare(self, *objects: Any) -> tuple[Any, ...]:
        prepared = self.accelerator.prepare(*objects)
        return prepared if isinstance(prepared, tuple) else (prepared,)

    def prepare_frozen(self, model: torch.nn.Module) -> torch.nn.Module:
        """A model that is only run forward beside the trained one (a task's frozen reference):
        parameters frozen, eval mode, on this rank's device with the run's autocast, not wrapped
        in DDP (it has no gradients to sync). Call it after :meth:`prepare`."""
        model.requires_grad_(False)
        model.eval()
        return self.accelerator.prepare_model(model, evaluation_mode=True)  # type: ignore[no-any-return]

    def register_for_checkpointing(self, *objects: Any) -> None:
        self.accelerator.register_for_checkpointing(*objects)

    def skip_batches(self, loader: Any, n: int) -> Any:
        """``loader`` without its first ``n`` batches (a resume mid-epoch), or ``loader`` when ``n`` is 0."""
        return self.accelerator.skip_first_batches(loader, n) if n else loader

    def unwrap(self, obj: Any) -> Any:
        """The bare model inside DDP / DeepSpeed / ``torch.compile`` wrappers; for a scheduler
        that :meth:`prepare` wrapped, the inner scheduler."""
        return unwrap(obj)

    # -- training step ---------------------------------------------------------------
    #
    # The loop calls backward() for every micro-batch and optimizer_step() once per
    # accumulation boundary, and checks the loss for non-finite values in between.

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """The run's mixed precision around forward passes outside :meth:`prepare`d models
        (``tuneforge meta`` runs its encoder passes under it)."""
        return self.accelerator.autocast()

    def accumulate(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
        return self.accelerator.accumulate(model)

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def clip_grad_norm(self, model: torch.nn.Module, max_norm: float | None) -> float | None:
        """Clip on optimizer-step boundaries; returns the pre-clip total norm."""
        if max_norm is None or not self.sync_gradients:
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
        if discard:
            optimizer.zero_grad(set_to_none=True)
            return StepOutcome(applied=False, nonfinite=True)
        norm = self.clip_grad_norm(model, max_norm) if max_norm is not None else None
        scaler = self.accelerator.scaler is not None  # fp16 loss scaling skips overflowing steps itself
        if norm is not None and not math.isfinite(norm) and not scaler:
            optimizer.zero_grad(set_to_none=True)
            return StepOutcome(applied=False, nonfinite=True, grad_norm=norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        skipped = bool(self.accelerator.optimizer_step_was_skipped)
        return StepOutcome(applied=not skipped, nonfinite=False, grad_norm=norm)

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
        return self._reduce(tensor, op)

    def _reduce(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        reduced = self.accelerator.reduce(tensor.detach().to(self.device).clone(), reduction=op)
        return reduced.to(tensor.device)

    def any_rank(self, flag: bool) -> bool:
        """True if ``flag`` is true on any rank (every rank must call this together)."""
        return collectives.any_rank(flag, self.device)

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
        from accelerate.utils import broadcast_object_list

        box = [obj]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        from accelerate.utils import gather_object

        return list(gather_object([obj]))

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    # -- state -------------------------------------------------------------------------

    def save_state(self, directory: Path) -> None:
        """Model, optimizer, registered objects and RNG states of every rank."""
        self.accelerator.save_state(str(directory), safe_serialization=True)

    def load_state(self, directory: Path, world_size: int | None = None) -> None:
        """Restore what :meth:`save_state` wrote. ``world_size``: processes that wrote it
        (one full model/optimizer file loads at any world size)."""
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

    def export_model(self, model: torch.nn.Module, directory: Path, tokenizer: Any = None) -> None:
        """Write ``model`` in Hugging Face format (full weights gathered to rank 0)."""
        state_dict = self.accelerator.get_state_dict(model)
        if self.is_main:
            directory.mkdir(parents=True, exist_ok=True)
            self.unwrap(model).save_pretrained(str(directory), state_dict=state_dict, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(directory))
        self.barrier()

    def end(self) -> None:
        self.accelerator.end_training()


def to_numpy(outputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Gathered outputs as numpy arrays (floating point ones as float32)."""
    return {k: v.detach().float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy() for k, v in outputs.items()}
