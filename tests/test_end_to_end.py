"""A tiny real run through the public path: config dict -> train -> run directory."""

import json

from transformers import AutoModelForSequenceClassification


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
