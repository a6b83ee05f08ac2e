"""A tiny real run through the public path: config dict -> train -> run directory."""

import json

from transformers import AutoModelForSequenceClassification

from tuneforge import hookimpl


def test_tiny_classification_run_learns_and_exports(tf_run, tiny_classification_config, tf_hook_recorder):
    results, run_dir = tf_run(tiny_classification_config, plugins=[tf_hook_recorder])

    assert results["status"] == "completed"
    assert results["steps"] == 40
    assert results["test"]["accuracy"] >= 0.9  # the keyword decides the label
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_losses = [x["loss"] for x in lines if x["split"] == "train"]
    assert len(train_losses) == 40 and train_losses[-1] < train_losses[0]
    assert (run_dir / "config.yaml").is_file() and (run_dir / "results.json").is_file()
    names = tf_hook_recorder.names()
    assert names[0] == "tf_on_fit_start" and names.count("tf_on_step_end") == 40
    assert "tf_on_fit_end" in names and "tf_on_checkpoint" in names

    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model")
    assert model.config.id2label == {0: "neg", 1: "pos"}


class _BalancedErrorRate:
    """A third-party metric plugin: registers a metric over (predicted, gold) labels."""

    calls = 0

    @staticmethod
    def ber(predictions, references):
        _BalancedErrorRate.calls += 1
        labels = sorted(set(references))
        recalls = [sum(p == g == lab for p, g in zip(predictions, references)) / references.count(lab) for lab in labels]
        return 1.0 - sum(recalls) / len(recalls)

    @hookimpl
    def tf_register_metrics(self, register):
        register("balanced_error", self.ber)


def test_registered_metrics_are_computed_and_can_select_the_best_model(tf_run, tiny_classification_config):
    cfg = {**tiny_classification_config,
           "evaluation": {"strategy": "steps", "every_n_steps": 20, "extra_metrics": ["matthews", "balanced_error"],
                          "metric": "balanced_error", "greater_is_better": False}}
    results, run_dir = tf_run(cfg, plugins=[_BalancedErrorRate()])
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [x for x in lines if x["split"] == "validation"]
    assert len(val) == 2 and all({"matthews", "balanced_error", "accuracy"} <= set(x) for x in val)
    assert results["metric"] == "balanced_error"
    assert results["best_metric"] == min(x["balanced_error"] for x in val)
    # the keyword decides the label: both classes are learned, so MCC is high and the error low
    assert results["test"]["matthews"] > 0.8 and results["test"]["balanced_error"] < 0.1
    assert _BalancedErrorRate.calls == 3  # two validations and the test split
