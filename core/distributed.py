"""The one module that talks to Accelerate (and, through it, DeepSpeed).

:class:`Runtime` is the distribution strategy the loop talks to: process setup,
``prepare``, backward, clipping, gathering, state save/load and export. The loop
never branches on single process vs DDP vs DeepSpeed.

Launch facts this module handles (measured with accelerate 1.15 on CPU):

* ``accelerate launch --multi_gpu`` or ``torchrun`` with ``WORLD_SIZE > 1`` on a
  machine without CUDA: a plain ``Accelerator()`` silently runs every process as an
  unsynchronised single process. We pass ``cpu=True`` there, which gives gloo ranks
  with sharded data, and we check afterwards that the world size was honoured.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneforge.config import RunConfig
from tuneforge.errors import ConfigError, DistributedError


def launched_world_size() -> int:
    """World size the launcher announced through the environment (1 if none)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


class Runtime:
    """Process group, device placement, and everything distributed, for one run."""

    def __init__(self, config: RunConfig) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.config = config
        t = config.training
        has_cuda = torch.cuda.is_available()
        if t.mixed_precision == "fp16" and not has_cuda:
            raise ConfigError(
                "training.mixed_precision=fp16 needs a CUDA GPU; on CPU use 'bf16' or 'no'"
            )
        world = launched_world_size()
        kwargs: dict[str, Any] = {
            "mixed_precision": t.mixed_precision,
            "gradient_accumulation_steps": t.gradient_accumulation_steps,
            "step_scheduler_with_optimizer": False,
        }
        if world > 1 and not has_cuda:
            kwargs["cpu"] = True
        self.accelerator = Accelerator(**kwargs)
        if world > 1 and self.accelerator.num_processes != world:
            raise DistributedError(
                f"the launcher started {world} processes (WORLD_SIZE={world}) but Accelerate set up "
                f"{self.accelerator.num_processes}; every rank would train on the full data unsynchronised. "
                "Launch with `torchrun --nproc_per_node N` or `accelerate launch --num_processes N`."
            )
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
        return bool(self.accelerator.optimizer_step_was_skipped)

    # -- setup -------------------------------------------------------------------------

    def prepare(self, *objects: Any) -> tuple[Any, ...]:
        prepared = self.accelerator.prepare(*objects)
        return prepared if isinstance(prepared, tuple) else (prepared,)

    def register_for_checkpointing(self, *objects: Any) -> None:
        self.accelerator.register_for_checkpointing(*objects)

    # -- training step ---------------------------------------------------------------

    def accumulate(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
        return self.accelerator.accumulate(model)

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        return self.accelerator.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def clip_grad_norm(self, model: torch.nn.Module, max_norm: float | None) -> float | None:
        """Clip on optimizer-step boundaries; returns the pre-clip total norm."""
        if max_norm is None or not self.sync_gradients:
            return None
        norm = self.accelerator.clip_grad_norm_(model.parameters(), max_norm)
        return None if norm is None else float(norm)

    # -- collectives -----------------------------------------------------------------

    def mean(self, value: torch.Tensor | float) -> float:
        """Mean of a scalar over all ranks."""
        t = torch.as_tensor(value, dtype=torch.float32, device=self.device).detach().reshape(1)
        return float(self.accelerator.reduce(t, reduction="mean").item())

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

    def load_state(self, directory: Path) -> None:
        self.accelerator.load_state(str(directory))

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.accelerator.unwrap_model(model)

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

    @contextlib.contextmanager
    def main_process_first(self) -> Iterator[None]:
        with self.accelerator.main_process_first():
            yield


def to_numpy(outputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy() for k, v in outputs.items()}
