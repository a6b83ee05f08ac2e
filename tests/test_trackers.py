"""Trackers: a tiny run logs to jsonl, TensorBoard and MLflow at once; each is read back."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from tuneforge.cli import main
from tuneforge.config import validate
from tuneforge.errors import PluginError
from tuneforge.run import preflight


@pytest.fixture
def tracked_run(tf_run, tiny_classification_config, monkeypatch) -> tuple[dict[str, Any], Path]:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    config = {**tiny_classification_config, "trackers": ["jsonl", "tensorboard", "mlflow"]}
    return tf_run(config, overrides=["training.log_every_n_steps=5"])


def test_jsonl_tensorboard_and_mlflow_read_back(tracked_run):
    results, run_dir = tracked_run
    assert results["status"] == "completed"
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = {x["step"]: x for x in lines if x["split"] == "train"}
    validation = {x["step"]: x for x in lines if x["split"] == "validation"}
    assert sorted(train) == [5, 10, 15, 20, 25, 30, 35, 40]
    assert sorted(validation) == [20, 40]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    params = json.loads((run_dir / "params.json").read_text())
    assert params["system"]["world_size"] == 1 and params["config"]["training"]["max_steps"] == 40

    # TensorBoard: the event file holds the same numbers.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    event_files = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert event_files, "no TensorBoard event file"
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "validation/accuracy", "test/accuracy"} <= tags
    tb_loss = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert sorted(tb_loss) == sorted(train)
    for step, value in tb_loss.items():
        assert value == pytest.approx(train[step]["loss"], rel=1e-5)
    tb_acc = {e.step: e.value for e in acc.Scalars("validation/accuracy")}
    assert tb_acc[40] == pytest.approx(validation[40]["accuracy"], rel=1e-6)
    assert acc.Scalars("test/accuracy")[-1].value == pytest.approx(results["test"]["accuracy"], rel=1e-6)
    assert any("config" in tag for tag in acc.Tags()["tensors"])  # the resolved config as text

    # MLflow: a SQLite store under the run dir, read through the client API.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{(run_dir / 'mlflow' / 'mlflow.db').resolve()}")
    experiment = client.get_experiment_by_name("tuneforge")
    (ml_run,) = client.search_runs([experiment.experiment_id])
    assert ml_run.info.status == "FINISHED"
    assert ml_run.data.tags["tuneforge.status"] == "completed"
    assert ml_run.data.params["training.max_steps"] == "40"
    assert ml_run.data.params["task.name"] == "classification"
    assert ml_run.data.tags["system.world_size"] == "1"
    history = {m.step: m.value for m in client.get_metric_history(ml_run.info.run_id, "train/loss")}
    assert history.keys() == train.keys()
    for step, value in history.items():
        assert value == pytest.approx(train[step]["loss"], rel=1e-9)
    assert ml_run.data.metrics["test/accuracy"] == pytest.approx(results["test"]["accuracy"])
    artifact = client.download_artifacts(ml_run.info.run_id, "config.yaml")
    assert yaml.safe_load(Path(artifact).read_text())["training"]["lr"] == pytest.approx(3e-3)


def test_missing_wandb_is_a_preflight_error_with_install_hint(tiny_classification_config, tmp_path, capsys):
    if "wandb" in sys.modules or importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    config = {**tiny_classification_config, "trackers": ["jsonl", "wandb"]}
    with pytest.raises(PluginError, match=r"pip install wandb.*remove 'wandb' from the config's trackers"):
        preflight(validate(config), check_output=False)
    path = tmp_path / "wandb.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["validate", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: tracker 'wandb' needs the 'wandb' package") and "Traceback" not in err


def test_unknown_tracker_name_suggests(tiny_classification_config):
    config = {**tiny_classification_config, "trackers": ["tensorbord"]}
    with pytest.raises(PluginError, match="did you mean 'tensorboard'"):
        preflight(validate(config), check_output=False)


class FakeWandbRun:
    def __init__(self, **kwargs: Any) -> None:
        self.init = kwargs
        self.logged: list[tuple[dict[str, float], int]] = []
        self.summary: dict[str, Any] = {}
        self.exit_code: int | None = None

    def log(self, data: dict[str, float], step: int) -> None:
        self.logged.append((data, step))

    def finish(self, exit_code: int = 0) -> None:
        self.exit_code = exit_code


def test_wandb_tracker_calls_offline_api(monkeypatch, tmp_path):
    """The wandb package is not installed here: check our use of its API on a recording stand-in."""
    from tuneforge.plugins.trackers import WandbTracker

    runs: list[FakeWandbRun] = []
    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.init = lambda **kw: runs.append(FakeWandbRun(**kw)) or runs[-1]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    tracker = WandbTracker(tmp_path / "my-run", {"training": {"lr": 0.1}})
    tracker.check_available()
    tracker.log_params({"config": {"training": {"lr": 0.1}}, "system": {"world_size": 1}})
    tracker.log_metrics(5, {"loss": 0.5}, "train")
    tracker.finish("completed")
    (run,) = runs
    assert run.init["mode"] == "offline" and run.init["name"] == "my-run"
    assert run.init["dir"] == str(tmp_path / "my-run" / "wandb") and run.init["config"] == {"training": {"lr": 0.1}}
    assert run.logged == [({"train/loss": 0.5}, 5)]
    assert run.summary == {"system.world_size": 1, "status": "completed"} and run.exit_code == 0


def test_flatten():
    from tuneforge.plugins.trackers import flatten

    assert flatten({"a": {"b": 1, "c": None, "d": [1, 2]}, "e": "x", "f": {}}) == {
        "a.b": 1, "a.c": "null", "a.d": "[1, 2]", "e": "x", "f": "{}"
    }
