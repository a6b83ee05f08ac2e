"""Few-shot: the K-shot sampler, cross-validation folds and objective, and the contrastive
task plugin (docs/few-shot.md)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tuneforge.builders import build_plugins, load_records, make_task
from tuneforge.config import validate
from tuneforge.crossval import fold_config, mean_over_folds
from tuneforge.data import read_records, sample_per_label, stratified_folds
from tuneforge.errors import ConfigError, DataError
from tuneforge.plugins.fewshot import LinearHead, contrastive_pairs, supcon_loss
from tuneforge.preflight import preflight
from tuneforge.search.objective import Objective, objective_value

LABELS = [f"l{i % 7}" for i in range(7 * 12)] + ["l0"] * 5  # 7 labels, 12-17 examples each
BANKING77 = Path(__file__).resolve().parents[2] / "shared" / "data" / "intents" / "banking77"


def write_data(tmp_path: Path) -> dict[str, str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    rows = [(f"text {i} about {label}", label) for i, label in enumerate(LABELS)]
    paths = {}
    for split, part in (("train", rows), ("validation", rows[:20]), ("test", rows[20:50])):
        path = tmp_path / f"{split}.csv"
        path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in part), encoding="utf-8")
        paths[split] = str(path)
    return paths


def records_of(tmp_path: Path, **data: Any) -> dict[str, list[dict[str, Any]]]:
    raw = {"model": {"name_or_path": "unused"}, "task": {"name": "classification"},
           "data": {**write_data(tmp_path), **data}, "output": {"dir": str(tmp_path / "run")}}
    return load(validate(raw))


def load(config: Any) -> dict[str, list[dict[str, Any]]]:
    return load_records(config, make_task(config, build_plugins(config)))


# -- the K-shot sampler --------------------------------------------------------------------


@pytest.mark.parametrize("shots", [1, 5, 12])
def test_sampler_keeps_exactly_k_per_label(shots: int) -> None:
    chosen = sample_per_label(LABELS, shots, seed=0)
    assert Counter(LABELS[i] for i in chosen) == {label: shots for label in set(LABELS)}
    assert chosen == sorted(set(chosen))  # no repeats, original order


def test_sampler_is_deterministic_by_seed_and_seeds_differ() -> None:
    assert sample_per_label(LABELS, 5, seed=3) == sample_per_label(LABELS, 5, seed=3)
    assert sample_per_label(LABELS, 5, seed=3) != sample_per_label(LABELS, 5, seed=4)


def test_sampler_refuses_a_label_with_fewer_than_k() -> None:
    with pytest.raises(DataError, match=r"shots_per_label=13.*6 label\(s\).*'l1' \(12\)"):
        sample_per_label(LABELS, 13, seed=0)


def test_load_records_draws_from_train_only(tmp_path: Path) -> None:
    full = records_of(tmp_path / "full")
    few = records_of(tmp_path / "few", shots_per_label=5, shots_seed=1)
    assert Counter(r["label"] for r in few["train"]) == {label: 5 for label in set(LABELS)}
    train_texts = {r["text"] for r in full["train"]}
    assert {r["text"] for r in few["train"]} <= train_texts
    assert few["test"] == full["test"] and few["validation"] == full["validation"]  # untouched
    again = records_of(tmp_path / "again", shots_per_label=5, shots_seed=1)
    assert [r["text"] for r in again["train"]] == [r["text"] for r in few["train"]]
    other = records_of(tmp_path / "other", shots_per_label=5, shots_seed=2)
    assert [r["text"] for r in other["train"]] != [r["text"] for r in few["train"]]


def test_shots_per_label_needs_a_label_field(tmp_path: Path) -> None:
    raw = {"model": {"name_or_path": "unused"}, "task": {"name": "qa"}, "data": {"train": "x.json", "shots_per_label": 2}}
    config = validate(raw)

    class NoLabels:
        options = object()

    from tuneforge.builders import few_shot_records

    with pytest.raises(ConfigError, match=r"data\.shots_per_label: task 'qa' has no label_field"):
        few_shot_records(config, NoLabels(), {"train": [{"text": "a"}]})  # type: ignore[arg-type]


# -- cross-validation folds -----------------------------------------------------------------


@pytest.mark.parametrize("folds", [2, 5, 12])
def test_folds_are_stratified_disjoint_and_covering(folds: int) -> None:
    parts = stratified_folds(LABELS, folds, seed=0)
    flat = [i for part in parts for i in part]
    assert sorted(flat) == list(range(len(LABELS)))  # disjoint and covering
    for label, n in Counter(LABELS).items():
        per_fold = [sum(LABELS[i] == label for i in part) for part in parts]
        assert max(per_fold) - min(per_fold) <= 1 and sum(per_fold) == n  # stratified
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert stratified_folds(LABELS, folds, seed=0) == parts
    assert stratified_folds(LABELS, folds, seed=1) != parts


def test_folds_need_a_label_in_every_fold() -> None:
    with pytest.raises(DataError, match="cv_folds=13"):
        stratified_folds(LABELS, 13, seed=0)


def test_cv_fold_carves_validation_from_the_k_shot_train(tmp_path: Path) -> None:
    few = records_of(tmp_path / "few", shots_per_label=5, shots_seed=1)
    paths = write_data(tmp_path / "cv")
    del paths["validation"]
    raw = {"model": {"name_or_path": "unused"}, "task": {"name": "classification"},
           "data": {**paths, "shots_per_label": 5, "shots_seed": 1, "cv_folds": 5},
           "output": {"dir": str(tmp_path / "run")}}
    config = validate(raw)
    held_out: list[str] = []
    for fold in range(5):
        cfg = fold_config(config, fold)
        assert cfg.data.test is None and not cfg.output.export
        recs = load(cfg)
        assert "test" not in recs
        assert Counter(r["label"] for r in recs["validation"]) == {label: 1 for label in set(LABELS)}
        assert Counter(r["label"] for r in recs["train"]) == {label: 4 for label in set(LABELS)}
        assert {r["text"] for r in recs["train"]}.isdisjoint(r["text"] for r in recs["validation"])
        held_out += [r["text"] for r in recs["validation"]]
    assert sorted(held_out) == sorted(r["text"] for r in few["train"])


def test_cv_folds_refuses_another_validation_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cv_folds takes validation from the training folds"):
        validate({"model": {"name_or_path": "m"}, "task": {"name": "classification"},
                  "data": {"train": "t.csv", "validation": "v.csv", "cv_folds": 5}})


def test_cross_validation_objective_is_the_mean_over_folds(tmp_path: Path) -> None:
    per_fold = [{"accuracy": 0.5, "macro_f1": 0.4}, {"accuracy": 0.7, "macro_f1": 0.6}, {"accuracy": 0.9}]
    mean = mean_over_folds(per_fold)
    assert mean == {"accuracy": pytest.approx(0.7)}  # only metrics every fold reports
    (tmp_path / "results.json").write_text(json.dumps({"cross_validation": {"validation": mean}}))
    # a fold's evaluations in the trial log do not decide the objective: the mean does
    (tmp_path / "trial_evaluations.jsonl").write_text(json.dumps({"step": 1, "metrics": {"accuracy": 0.9}}) + "\n")
    assert objective_value(Objective("validation.accuracy", "maximize"), tmp_path) == pytest.approx(0.7)


def test_cross_validated_run_end_to_end(tf_run: Any, tiny_classification_config: dict[str, Any]) -> None:
    config = tiny_classification_config
    config["data"] = {k: v for k, v in config["data"].items() if k != "validation"}
    results, run_dir = tf_run(config, overrides=["data.cv_folds=3", "data.shots_per_label=6", "training.max_steps=4",
                                                 "evaluation.strategy=epoch"])
    cv = results["cross_validation"]
    assert cv["folds"] == 3 and len(cv["per_fold"]) == 3 and "test" not in results
    assert results["validation"]["accuracy"] == pytest.approx(np.mean([m["accuracy"] for m in cv["per_fold"]]))
    assert json.loads((run_dir / "results.json").read_text())["cross_validation"] == cv
    assert sorted(p.name for p in (run_dir / "folds").iterdir()) == ["fold-0", "fold-1", "fold-2"]


# -- the contrastive task plugin ------------------------------------------------------------


def test_supcon_loss_is_lower_when_labels_cluster() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    clustered = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    assert supcon_loss(clustered, labels, 0.1) < supcon_loss(mixed, labels, 0.1)


def test_contrastive_pairs_are_positive_and_negative() -> None:
    labels = [0, 0, 1, 1, 2, 2]
    pairs = contrastive_pairs(labels, rounds=3, seed=0)
    assert len(pairs) == 2 * 3 * len(labels)
    for i, j, target in pairs:
        assert (labels[i] == labels[j]) == (target == 1.0) and (target == 0.0 or i != j)
    assert pairs == contrastive_pairs(labels, rounds=3, seed=0)


@pytest.mark.parametrize("kind", ["prototype", "logistic"])
@pytest.mark.parametrize("classes", [2, 3])
def test_linear_heads_fit_predict_and_round_trip(kind: str, classes: int) -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(4)[:classes]
    labels = np.repeat(np.arange(classes), 5)
    x = centres[labels] + 0.05 * rng.standard_normal((len(labels), 4))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    head = LinearHead.fit(kind, x, labels, 10.0)
    predicted, confidence = head.predict(x)
    assert (predicted == labels).all() and confidence.shape == (len(labels),)
    again = LinearHead.from_json(json.loads(json.dumps(head.to_json())))
    assert (again.predict(x)[0] == predicted).all()


@pytest.mark.parametrize("loss", ["pairs", "supcon"])
def test_plugin_and_meta_test_share_one_contrastive_loss(loss: str, tiny_classification_config: dict[str, Any]) -> None:
    """The task's training loss and the meta-test's (tuneforge.meta) are tuneforge.contrastive's:
    the same value on the same examples and model."""
    from tuneforge import contrastive
    from tuneforge.meta.learner import ContrastiveAdaptation, EpisodeLearner, ExampleStore
    from tuneforge.plugins import fewshot

    for name in ("supcon_loss", "contrastive_pairs", "pair_loss", "pool", "LinearHead"):
        assert getattr(fewshot, name) is getattr(contrastive, name)  # re-exported, not copied
    config = tiny_classification_config
    config["task"] = {"name": "fewshot_classification", "loss": loss, "pairs_per_example": 2, "temperature": 0.1}
    cfg = validate(config)
    task = make_task(cfg, build_plugins(cfg))
    records = read_records(config["data"]["train"])[:12]
    task.prepare(records)
    tokenizer = task.load_tokenizer()
    model = task.build_model(tokenizer).eval()  # dropout off: the task's two SupCon views are equal
    plugin_value = float(task.training_loss(model, task.collate(task.encode(records, tokenizer, "train"), tokenizer)).detach())

    store = ExampleStore()
    ids = store.add([r["text"] for r in records])
    store.tokenize(tokenizer, cfg.data.max_length)
    learner = EpisodeLearner(model, store, pad_token_id=tokenizer.pad_token_id or 0)
    labels = [f["labels"] for f in task.train_features or []]
    if loss == "supcon":
        core_value = learner.contrastive_loss(list(zip(ids, labels)), ContrastiveAdaptation("supcon", temperature=0.1))
    else:
        embeddings = learner.embed(ids)
        drawn = contrastive.contrastive_pairs(labels, 2, cfg.training.seed)
        core_value = contrastive.pair_loss(embeddings[[i for i, _, _ in drawn]], embeddings[[j for _, j, _ in drawn]],
                                           torch.tensor([t for _, _, t in drawn]))
    assert len(set(labels)) == 2 and plugin_value > 0
    assert float(core_value.detach()) == pytest.approx(plugin_value, rel=1e-5)


@pytest.mark.parametrize("loss", ["pairs", "supcon"])
def test_fewshot_task_trains_exports_and_reloads(loss: str, tf_run: Any, tiny_classification_config: dict[str, Any]) -> None:
    config = tiny_classification_config
    config["task"] = {"name": "fewshot_classification", "loss": loss, "pairs_per_example": 2, "head": "logistic"}
    results, run_dir = tf_run(config, overrides=["data.shots_per_label=8", "training.max_steps=6"])
    assert 0.0 <= results["test"]["accuracy"] <= 1.0 and results["steps"] == 6
    state = json.loads((run_dir / "model" / "task_state.json").read_text())
    assert state["head"]["kind"] == "logistic" and len(state["head"]["classes"]) == 2

    from tuneforge import inference

    trained = inference.load(model=run_dir / "model")
    records = read_records(config["data"]["test"])
    features, outputs = inference.infer(trained, records, "test")
    metrics = inference.compute_metrics(trained, outputs, "test", features)
    assert metrics["accuracy"] == pytest.approx(results["test"]["accuracy"])  # the saved head, no train data


def test_zero_steps_scores_the_frozen_encoder(tf_run: Any, tiny_classification_config: dict[str, Any]) -> None:
    config = tiny_classification_config
    config["task"] = {"name": "fewshot_classification", "head": "prototype"}
    results, _ = tf_run(config, overrides=["training.max_steps=0", "evaluation.strategy=no"])
    assert results["steps"] == 0 and "accuracy" in results["test"]


def test_fewshot_task_refuses_text_pairs(tiny_classification_config: dict[str, Any]) -> None:
    config = tiny_classification_config
    config["task"] = {"name": "fewshot_classification", "text_pair_field": "other"}
    with pytest.raises(ConfigError, match="text_pair_field"):
        preflight(validate(config), check_output=False).make_task()


@pytest.mark.shared_data
def test_banking77_five_shot_draw(tmp_path: Path) -> None:
    if not (BANKING77 / "train.csv").is_file():
        pytest.skip(f"BANKING77 not found at {BANKING77}")
    train = read_records(BANKING77 / "train.csv")
    chosen = sample_per_label([r["category"] for r in train], 5, seed=0)
    assert len(chosen) == 77 * 5
