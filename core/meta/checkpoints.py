"""Checkpoints of a ``tuneforge meta`` run, so that a kill or a crash loses at most
the steps since the last one and ``resume=auto`` (``tuneforge meta --resume``)
continues to the same results as an uninterrupted run.

They live in ``<output.dir>/checkpoints`` and are written by the same
:class:`tuneforge.checkpoint.CheckpointManager` as training checkpoints (atomic,
sha256 manifest, the last ``output.keep_last`` kept). A checkpoint's step counts
progress through the whole run:

* meta-training steps ``1..M`` (``M = meta.meta_steps``);
* the multi-task baseline's steps ``M+1..M+T``;
* ``M+T+1`` once every start is final (and meta-val is scored), then one step per
  finished meta-test setting.

Each holds ``meta_state.pt`` (the finished starts as flat vectors, and the current
loop's parameters, optimizer and schedule) and, in ``trainer_state.json``, the phase,
the results so far and the settings the run was started with: resuming under other
settings is refused, since the saved steps and scores would not be the new run's.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tuneforge.checkpoint import CheckpointManager, read_state
from tuneforge.config import RunConfig, diff_keys
from tuneforge.errors import CheckpointError, ConfigError
from tuneforge.meta.config import MetaConfig
from tuneforge.meta.loops import multitask_steps

log = logging.getLogger("tuneforge.meta")

STATE_FILE = "meta_state.pt"
PHASES = ("meta_train", "multitask", "evaluate")


@dataclass
class SavedMeta:
    """What a checkpoint restored: where it was, and what it holds."""

    path: Path
    step: int
    name: str  # the phase it was written in
    phase: dict[str, Any] | None  # that phase's loop state (for meta_train / multitask)
    starts: dict[str, torch.Tensor]
    results: dict[str, Any]


class MetaCheckpoints:
    """Saves and restores the progress of one meta run (see the module docstring)."""

    def __init__(self, config: RunConfig, runtime: Any) -> None:
        meta = config.meta
        assert meta is not None
        self.config, self.runtime = config, runtime
        self.manager = CheckpointManager(Path(config.output.dir), config.output.keep_last, is_main=runtime.is_main)
        baseline_steps = multitask_steps(meta) if "multitask" in meta.eval.baselines else 0
        self._offsets = {"meta_train": 0, "multitask": meta.meta_steps,
                         "evaluate": meta.meta_steps + baseline_steps + 1}
        self.settings = {
            "model": config.model.model_dump(mode="json"),
            "task": config.task.model_dump(mode="json"),
            "data": config.data.model_dump(mode="json"),
            "adapter": None if config.adapter is None else config.adapter.model_dump(mode="json"),
            "meta": meta.model_dump(mode="json"),
            "seed": config.training.seed,
        }

    def offset(self, phase: str) -> int:
        """The run-wide step just before ``phase``'s first step (metrics are logged at offset + step)."""
        return self._offsets[phase]

    def every(self, total: int) -> int:
        """Checkpoint interval of a loop of ``total`` steps: ``output.save_every_n_steps``, or a tenth."""
        return self.config.output.save_every_n_steps or max(1, math.ceil(total / 10))

    @staticmethod
    def pending(phase: str, saved: SavedMeta | None) -> bool:
        """Whether ``phase`` still has to run (its loop continues when the checkpoint is from it)."""
        return saved is None or PHASES.index(saved.name) <= PHASES.index(phase)

    def restore(self) -> SavedMeta | None:
        """The checkpoint named by ``resume`` (none for ``never``); ``output.overwrite`` with
        ``resume=never`` clears old checkpoints. Every rank gets the same state."""
        manager, config = self.manager, self.config
        path = manager.resolve(config.resume)
        if path is None:
            if self.runtime.is_main and config.output.overwrite:
                shutil.rmtree(manager.root, ignore_errors=True)
            self.runtime.barrier()
            return None
        state = read_state(path)
        if state.get("kind") != "meta":
            raise CheckpointError(f"resume: {path} is a training checkpoint, not one of a `tuneforge meta` run")
        changed = diff_keys(upgraded(state.get("settings")), self.settings)
        if changed:
            raise ConfigError(
                f"resume: {path} was written with other settings ({', '.join(changed)} differ); resume with "
                "the run's own config, or start over with output.overwrite=true or another output.dir"
            )
        if self.runtime.is_main:
            manager.set_aside_after(int(state["step"]))
        self.runtime.barrier()
        blob = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        log.info("resuming the meta run from %s (%s, run step %d)", path, state["phase"], state["step"])
        return SavedMeta(path, int(state["step"]), str(state["phase"]), blob["phase"], dict(blob["starts"]),
                         dict(state["results"]))

    def save(self, phase: str, step: int, loop_state: dict[str, Any], starts: dict[str, torch.Tensor],
             results: dict[str, Any]) -> Path:
        """Write the checkpoint of ``phase``'s ``step``: its loop state, the finished starts
        (not the pre-trained one, which is reloaded) and the results so far."""
        run_step = self._offsets[phase] + step
        blob = {"phase": loop_state or None, "starts": {k: v for k, v in starts.items() if k != "pretrained"}}
        state = {"kind": "meta", "step": run_step, "phase": phase, "phase_step": step, "settings": self.settings,
                 "results": results}

        def write(directory: Path) -> None:
            if self.runtime.is_main:
                torch.save(blob, directory / STATE_FILE)

        return self.manager.save(run_step, state, write, self.runtime.barrier)


def upgraded(settings: Any) -> Any:
    """Saved settings with the ``meta`` keys added since they were written at their defaults, so
    a run checkpointed by an earlier version resumes when nothing it used has changed."""
    if not isinstance(settings, dict) or not isinstance(settings.get("meta"), dict):
        return settings
    try:
        meta = MetaConfig.model_validate(settings["meta"]).model_dump(mode="json")
    except ValueError:  # not a valid section any more: the comparison names what differs
        return settings
    return {**settings, "meta": meta}
