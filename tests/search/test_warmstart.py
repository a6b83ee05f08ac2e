from __future__ import annotations

import optuna
import pytest

from tuneforge.config import validate
from tuneforge.search.warmstart import (
    record_task_metadata,
    similar_studies,
    task_metadata,
    task_similarity,
    warm_start_from_similar,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def meta(task: str = "classification", labels=("a", "b", "c"), n: int = 100, model: str = "m") -> dict:
    return {"task": task, "labels": list(labels), "n_train": n, "model": model}


def test_similarity_orders_tasks() -> None:
    base = meta()
    assert task_similarity(base, base) == pytest.approx(1.0)
    assert task_similarity(base, meta(task="ner")) == 0.0
    close = task_similarity(base, meta(labels=("a", "b", "d"), n=80))
    far = task_similarity(base, meta(labels=("x", "y"), n=10, model="other"))
    assert 1.0 > close > far > 0.0


def test_task_metadata_reads_labels(tmp_path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("text,category\nhi,greet\nbye,leave\nyo,greet\n")
    cfg = validate({"model": {"name_or_path": "m"}, "task": {"name": "classification", "label_field": "category"},
                    "data": {"train": str(path)}})
    assert task_metadata(cfg) == {"task": "classification", "model": "m", "data": str(path),
                                  "n_train": 3, "labels": ["greet", "leave"]}


def test_new_study_is_seeded_with_best_configs_of_similar_studies() -> None:
    storage = optuna.storages.InMemoryStorage()

    def finished(name: str, metadata: dict, values: dict[float, float]) -> None:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
        record_task_metadata(study, metadata)
        for lr, acc in values.items():
            study.add_trial(optuna.trial.create_trial(
                params={"training.lr": lr, "training.batch_size": 16},
                distributions={"training.lr": optuna.distributions.FloatDistribution(1e-6, 1e-2, log=True),
                               "training.batch_size": optuna.distributions.IntDistribution(8, 64)},
                value=acc))

    finished("banking-a", meta(labels=("a", "b", "c", "d"), n=900), {1e-4: 0.9, 3e-5: 0.7, 1e-3: 0.5})
    finished("banking-b", meta(labels=("a", "b", "c"), n=1000), {5e-5: 0.8, 2e-4: 0.85})
    finished("ner", meta(task="ner"), {7e-4: 0.99})
    optuna.create_study(storage=storage, study_name="no-metadata")

    target = meta(labels=("a", "b", "c"), n=1000)
    ranked = similar_studies(storage, target)
    assert [name for name, _ in ranked] == ["banking-b", "banking-a"]

    new = optuna.create_study(storage=storage, study_name="new", direction="maximize")
    queued = warm_start_from_similar(new, storage, target, ["training.lr"], top_k=2)
    assert queued == [{"training.lr": 2e-4}, {"training.lr": 5e-5}, {"training.lr": 1e-4}, {"training.lr": 3e-5}]
    first = new.ask({"training.lr": optuna.distributions.FloatDistribution(1e-6, 1e-2, log=True)})
    assert first.params == {"training.lr": 2e-4}
    assert first.user_attrs["warm_start_from"] == "banking-b"
