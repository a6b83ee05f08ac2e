"""Fixtures for meta-learning tests: a labelled data set with many labels, each
decided by a keyword the tiny BERT's vocabulary knows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from meta_data import write_many_label_csv


@pytest.fixture(autouse=True)
def one_torch_thread() -> Any:
    """Tiny models on a shared CPU run many times faster on one thread (no OpenMP spinning)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def many_label_csv(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_many_label_csv(tmp_path_factory.mktemp("meta-data") / "train.csv"))


@pytest.fixture
def tiny_meta_config(tiny_bert: str, many_label_csv: str, tmp_path: Path) -> dict[str, Any]:
    """A complete `tuneforge meta` config dict that runs in a few seconds."""
    return {
        "model": {"name_or_path": tiny_bert},
        "task": {"name": "classification", "label_field": "category"},
        "data": {"train": many_label_csv, "max_length": 16},
        "training": {"seed": 0, "log_every_n_steps": 2},
        "output": {"dir": str(tmp_path / "meta-run")},
        "meta": {
            "algorithm": "reptile", "val_labels": 3, "test_labels": 5, "ways": 3, "shots": 2, "query": 2,
            "meta_steps": 4, "meta_batch_size": 2, "inner_steps": 2, "inner_lr": 1e-3, "outer_lr": 0.5,
            "multitask_steps": 4, "multitask_batch_size": 8, "val_episodes": 4,
            "eval": {"ways": [3], "shots": [1, 2], "query": 2, "episodes": 6, "steps": 2},
        },
    }
