"""Fixtures of the multi-process tests: a tiny classification model whose head is already
saved (no random init at load, so every process and launcher starts from the same weights),
data with an odd-sized test split, and a single-process reference run to compare with."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
from launching import check, run, train_args, worker_env, write_config

N_TRAIN, N_EVAL = 96, 33  # 33: the last eval batch is ragged across 2 ranks
STEPS, BATCH = 6, 8  # 2 ranks x 8 == 1 rank x 16


@pytest.fixture(scope="session")
def cls_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tuneforge.testing.pytest_plugin import make_tiny_bert

    base = make_tiny_bert(tmp_path_factory.mktemp("tiny-bert-base"))
    out = tmp_path_factory.mktemp("tiny-bert-cls")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1},
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def mp_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from tuneforge.testing.pytest_plugin import make_classification_data

    return make_classification_data(tmp_path_factory.mktemp("mp-data"), n_train=N_TRAIN, n_eval=N_EVAL)


@pytest.fixture(scope="session")
def mp_config(cls_model: str, mp_data: dict[str, str]) -> dict[str, Any]:
    """A run of 6 steps that checkpoints at step 3 and 6, evaluates the test split and exports."""
    return {
        "model": {"name_or_path": cls_model},
        "task": {"name": "classification", "labels": ["neg", "pos"]},
        "data": {**mp_data, "max_length": 16},
        "training": {"max_steps": STEPS, "batch_size": BATCH, "lr": 3e-3, "seed": 0, "log_every_n_steps": 1,
                     "max_grad_norm": 1.0, "eval_batch_size": 16},
        "evaluation": {"strategy": "no"},
        "output": {"save_every_n_steps": 3, "keep_last": 3, "save_best": False},
        "plugins": ["tf_probe"],
    }


def make_config(base: dict[str, Any], run_dir: Path, **sections: dict[str, Any]) -> Path:
    cfg = copy.deepcopy(base)
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values} if isinstance(values, dict) else values
    cfg.setdefault("output", {})["dir"] = str(run_dir)
    return write_config(run_dir.parent / f"{run_dir.name}.yaml", cfg)


@pytest.fixture(scope="session")
def reference_run(mp_config: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process, batch 2 x 8 = 16: what every 2-rank run must reproduce."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    path = make_config(mp_config, run_dir, training={"batch_size": 2 * BATCH})
    check(run([sys.executable, *train_args(path)], env=worker_env()))
    return run_dir
