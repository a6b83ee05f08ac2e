"""Unit tests of the loop's pieces: the evaluation pass and step counting."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tuneforge.config import validate
from tuneforge.evaluation import collect_outputs, concat_outputs
from tuneforge.loop import total_training_steps


class _Task:
    """What collect_outputs needs of a task: an evaluation step."""

    def evaluation_step(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        assert not model.training and not torch.is_grad_enabled()
        return {"logits": model(batch["x"]), "labels": batch["y"]}


def test_collect_outputs_concatenates_in_order_and_restores_mode() -> None:
    model = torch.nn.Linear(2, 3)
    model.train()
    batches = [{"x": torch.randn(4, 2), "y": torch.arange(4)}, {"x": torch.randn(2, 2), "y": torch.arange(4, 6)}]
    seen: list[int] = []
    out = collect_outputs(model, _Task(), batches, gather=lambda o: {k: v * 1 for k, v in o.items()},  # type: ignore[arg-type]
                          on_batch=lambda: seen.append(1))
    assert out["logits"].shape == (6, 3) and out["labels"].tolist() == list(range(6))
    assert model.training and len(seen) == 2


def test_concat_pads_sequence_dims_with_minus_100() -> None:
    out = concat_outputs([np.ones((2, 3)), np.zeros((1, 5))])
    assert out.shape == (3, 5)
    assert (out[:2, 3:] == -100).all() and (out[2] == 0).all()


def test_total_training_steps_from_epochs_or_max_steps() -> None:
    raw = {"model": {"name_or_path": "m"}, "task": {"name": "classification"}, "data": {"train": "t.csv"},
           "training": {"epochs": 1.5}}
    assert total_training_steps(validate(raw), 10) == 15
    raw["training"] = {"max_steps": 7}
    assert total_training_steps(validate(raw), 10) == 7
