"""How a plugin package tests itself with tuneforge's pytest fixtures (run: pytest tests/ here,
after `pip install -e .`). tuneforge's own suite tests this package from the outside."""

from pathlib import Path

import pytest

plugin = pytest.importorskip("tuneforge_relation_extraction.plugin")
DATA = Path(__file__).resolve().parents[1] / "data"


def test_tiny_run(tf_run, tiny_bert, tmp_path, tf_single_thread):
    results, run_dir = tf_run(
        {
            "model": {"name_or_path": tiny_bert},
            "task": {"name": "relation_extraction"},
            "data": {"train": str(DATA / "train.jsonl"), "validation": str(DATA / "dev.jsonl"), "max_length": 48},
            "training": {"max_steps": 20, "batch_size": 16, "lr": 3e-3, "seed": 0},
            "evaluation": {"strategy": "steps", "every_n_steps": 20},
        },
        plugins=[plugin],  # registered explicitly: works even when the entry point is not installed
    )
    assert results["status"] == "completed"
    assert 0.0 <= results["validation"]["micro_f1"] <= 1.0
    assert (run_dir / "model" / "task_state.json").is_file()


def test_micro_f1_ignores_no_relation():
    m = plugin.relation_micro_f1([0, 1, 1], [0, 1, 0], no_relation_id=0)
    assert m["precision"] == 0.5 and m["recall"] == 1.0
