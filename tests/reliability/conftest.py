"""Fixtures of the fault tests (helpers live in ``fault_helpers``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def fault_config(tiny_bert: str, tiny_classification_data: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    """30 steps with dropout, periodic checkpoints every 5 steps, evaluation every 10 (best
    checkpoints), the fault plugins loaded; ~96 examples / batch 16 = 6 batches per epoch."""
    return {
        "model": {"name_or_path": tiny_bert},
        "task": {"name": "classification"},
        "data": {**tiny_classification_data, "max_length": 32},
        "training": {"max_steps": 30, "batch_size": 16, "lr": 3e-3, "seed": 0, "log_every_n_steps": 1,
                     "warmup_steps": 3},
        "evaluation": {"strategy": "steps", "every_n_steps": 10},
        "output": {"dir": str(tmp_path / "run"), "save_every_n_steps": 5, "keep_last": 2, "export": False},
        "plugins": ["fault_plugins"],
    }


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print how many malformed inputs the property-based tests generated (also in CI logs)."""
    module = sys.modules.get("test_bad_inputs")
    cases = (len(getattr(module, "CONFIG_CASES", [])), len(getattr(module, "DATA_CASES", []))) if module else (0, 0)
    if any(cases):
        terminalreporter.write_line(
            f"tuneforge bad-input cases tried: {cases[0]} config/override/file, {cases[1]} data files; "
            "each ended in a one-line user error"
        )
