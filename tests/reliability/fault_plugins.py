"""Fault-injection plugins for the reliability tests (import name ``fault_plugins``).

Loaded in-process (``tf_run(..., plugins=[fault_plugins])``) or by a ``tuneforge train``
subprocess through the config (``plugins: [fault_plugins]`` with this directory on
``PYTHONPATH``).

* task ``faulty-classification``: the classification task, plus options that make the
  training loss NaN/inf (``fault_steps``, ``fault: nan | inf | grad``) at given optimizer
  steps (1-based, counted in training_loss calls; no gradient accumulation assumed).
* ``TF_FAULT_KILL_IN_CHECKPOINT=<step>``: SIGKILL this process in the middle of writing
  the checkpoint of that step (after Accelerate wrote the state into the ``.tmp-step-*``
  directory, before the manifest and the rename).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from tuneforge import hookimpl
from tuneforge.plugins.classification import ClassificationOptions, ClassificationTask


class FaultyOptions(ClassificationOptions):
    fault_steps: list[int] = Field(default_factory=list, description="Optimizer steps (1-based) whose loss is faulty.")
    fault: Literal["nan", "inf", "grad"] = Field("nan", description="nan/inf loss, or a finite loss with NaN gradients.")


class FaultyClassificationTask(ClassificationTask):
    name = "faulty-classification"
    Options = FaultyOptions
    options: FaultyOptions

    def __init__(self, options: Any, config: Any) -> None:
        super().__init__(options, config)
        self.calls = 0

    def training_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = super().training_loss(model, batch)
        self.calls += 1
        if self.calls not in self.options.fault_steps:
            return loss
        if self.options.fault == "grad":
            # value unchanged, but d/dw sqrt(0 * |w|) = inf * 0 = NaN in every gradient it touches
            weight = next(p for p in model.parameters() if p.requires_grad)
            return loss + torch.sqrt(weight.abs().sum() * 0.0)
        return loss * float(self.options.fault)


@hookimpl
def tf_register_tasks(register: Any) -> None:
    register("faulty-classification", FaultyClassificationTask)


@hookimpl
def tf_on_fit_start(run: Any) -> None:
    kill_at = os.environ.get("TF_FAULT_KILL_IN_CHECKPOINT")
    if not kill_at:
        return
    runtime = run.runtime
    original = runtime.save_state
    target = f".tmp-step-{int(kill_at):08d}"

    def save_state_then_die(directory: Path, *args: Any, **kwargs: Any) -> None:
        original(directory, *args, **kwargs)
        if Path(directory).name == target:
            (Path(directory) / "KILLED_HERE").write_text("partial checkpoint", encoding="utf-8")
            os.kill(os.getpid(), signal.SIGKILL)

    runtime.save_state = save_state_then_die
