"""The preference task on 2 real processes (gloo): DPO with a frozen-copy reference (placed by
``Runtime.prepare_frozen``) and with a LoRA disabled-adapter reference trains like one process
with the double batch (the DPO loss is a mean over pairs, so 2 x 4 pairs == 1 x 8 pairs)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
from launching import REPO, check, run, torchrun, train_args, train_losses, write_config

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]
DATA = REPO / "configs" / "data" / "preference-tiny"
TOL = 1e-4


def config(model: str, run_dir: Path, batch: int, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "model": {"name_or_path": model},
        "task": {"name": "preference", "loss": "dpo", "beta": 0.5},
        "data": {"train": str(DATA / "train.jsonl"), "validation": str(DATA / "validation.jsonl"), "max_length": 48},
        "training": {"max_steps": 4, "batch_size": batch, "lr": 5e-3, "seed": 0, "log_every_n_steps": 1},
        "evaluation": {"strategy": "steps", "every_n_steps": 4},
        "output": {"dir": str(run_dir), "keep_last": 1, "export": False},
    }
    for key, value in extra.items():
        cfg[key] = copy.deepcopy(value)
    return cfg


@pytest.mark.parametrize("variant", ["copy", "lora"])
def test_two_ranks_equal_one_rank_with_double_batch(variant: str, tiny_llama: str, tmp_path: Path) -> None:
    extra: dict[str, Any] = {}
    if variant == "lora":
        extra["adapter"] = {"type": "lora", "r": 4, "dropout": 0.0, "target_modules": "all-linear"}
    one = tmp_path / "one" / "run"
    check(run([sys.executable, *train_args(write_config(tmp_path / "one.yaml", config(tiny_llama, one, 8, **extra)))]))
    two = tmp_path / "two" / "run"
    check(run(torchrun(2, *train_args(write_config(tmp_path / "two.yaml", config(tiny_llama, two, 4, **extra))))))
    got, want = train_losses(two), train_losses(one)
    assert len(got) == len(want) == 4
    diff = max(abs(a - b) for a, b in zip(got, want))
    assert diff < TOL, f"loss curves differ by {diff}: {got} vs {want}"
    assert want[-1] < want[0]
