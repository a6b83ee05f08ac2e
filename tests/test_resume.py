"""Stop a run mid-epoch, resume it, and get exactly the losses of an uninterrupted run."""

import json

import pytest

from tuneforge import hookimpl


class StopAfterCheckpoint:
    """Simulates a crash right after the checkpoint at ``step`` is complete."""

    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def tf_on_checkpoint(self, run, step, path):
        if step == self.step:
            raise KeyboardInterrupt


def losses(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {x["step"]: x["loss"] for x in lines if x["split"] == "train"}


def test_resume_reproduces_uninterrupted_losses(tf_run, tiny_classification_config, tmp_path):
    # dropout on, linear schedule, 96 examples / batch 16 = 6 batches per epoch: step 10 is mid-epoch 2
    base = {**tiny_classification_config, "training": {**tiny_classification_config["training"], "max_steps": 20},
            "evaluation": {"strategy": "no"}}
    base["output"] = {"dir": str(tmp_path / "straight"), "save_every_n_steps": 10}
    straight, _ = tf_run(base)

    base["output"]["dir"] = str(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        tf_run(base, plugins=[StopAfterCheckpoint(10)])
    resumed, run_dir = tf_run(base, overrides=["resume=auto"])

    assert straight["steps"] == resumed["steps"] == 20
    a, b = losses(tmp_path / "straight"), losses(run_dir)
    assert sorted(a) == sorted(b) == list(range(1, 21))
    for step in range(1, 21):
        assert abs(a[step] - b[step]) < 1e-6, (step, a[step], b[step])
    assert abs(straight["test"]["accuracy"] - resumed["test"]["accuracy"]) < 1e-9


def test_resume_auto_without_checkpoints_starts_fresh(tf_run, tiny_classification_config):
    results, run_dir = tf_run(tiny_classification_config, overrides=["resume=auto", "training.max_steps=3",
                                                                      "evaluation.strategy=no"])
    assert results["steps"] == 3 and (run_dir / "checkpoints").is_dir()
