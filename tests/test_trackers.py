"""Trackers: a tiny run logs to jsonl, TensorBoard and MLflow at once; each is read back."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tuneforge.cli import main
from tuneforge.config import validate
from tuneforge.errors import PluginError
from tuneforge.preflight import preflight


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


def test_missing_tracker_package_is_a_preflight_error_with_install_hint(tiny_classification_config, tmp_path,
                                                                         capsys, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name, *a))
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


def read_wandb_records(path: Path) -> list[Any]:
    """The records of a W&B ``run-*.wandb`` file: a 7-byte header (``:W&B``, magic, version), then
    LevelDB-log framed protobuf ``Record``s (32 KiB blocks; chunk header crc32c(4) length(2) type(1);
    type 1 = whole record, 2/3/4 = first/middle/last fragment)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B datastore"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_run_reads_back(tf_run, tiny_classification_config, monkeypatch):
    """W&B in its default offline mode: no network or account; the run file holds config, history, summary."""
    pytest.importorskip("wandb")
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = {**tiny_classification_config, "trackers": ["jsonl", "wandb"]}
    _, run_dir = tf_run(config, overrides=["training.log_every_n_steps=10"])
    (run_file,) = (run_dir / "wandb").glob("wandb/offline-run-*/run-*.wandb")
    records = read_wandb_records(run_file)
    kinds = [r.WhichOneof("record_type") for r in records]
    assert "run" in kinds and "exit" in kinds
    history: dict[int, dict[str, Any]] = {}
    config_items: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "history":
            row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            history.setdefault(int(row.get("_step", -1)), {}).update(row)
        elif kind == "run":
            config_items.update({i.key: json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            config_items.update({i.key: json.loads(i.value_json) for i in r.config.update})
        elif kind == "summary":
            summary.update({i.key: json.loads(i.value_json) for i in r.summary.update})
        elif kind == "exit":
            assert r.exit.exit_code == 0
    jsonl = {x["step"]: x for x in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
             if x["split"] == "train"}
    logged = {step: row["train/loss"] for step, row in history.items() if "train/loss" in row}
    assert sorted(logged) == sorted(jsonl) == [10, 20, 30, 40]
    for step, value in logged.items():
        assert value == pytest.approx(jsonl[step]["loss"], rel=1e-6)
    assert any("test/accuracy" in row for row in history.values())
    assert config_items["training"]["max_steps"] == 40
    assert summary["status"] == "completed" and summary["system.world_size"] == 1


def test_flatten():
    from tuneforge.plugins.trackers import flatten

    assert flatten({"a": {"b": 1, "c": None, "d": [1, 2]}, "e": "x", "f": {}}) == {
        "a.b": 1, "a.c": "null", "a.d": "[1, 2]", "e": "x", "f": "{}"
    }
