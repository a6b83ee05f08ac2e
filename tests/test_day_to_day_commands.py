"""`tuneforge evaluate / predict / runs / report` on one tiny trained run."""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tuneforge.cli import main
from tuneforge.config import validate
from tuneforge.run import train

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny_config(tiny_bert: str, data: dict[str, str], run_dir: Path) -> dict[str, Any]:
    return {
        "model": {"name_or_path": tiny_bert},
        "task": {"name": "classification"},
        "data": {**data, "max_length": 32},
        "training": {"max_steps": 30, "batch_size": 16, "lr": 3e-3, "seed": 0, "log_every_n_steps": 2},
        "evaluation": {"strategy": "steps", "every_n_steps": 10},
        "output": {"dir": str(run_dir), "keep_last": 1},
    }


@pytest.fixture(scope="module")
def trained(tiny_bert, tiny_classification_data, tmp_path_factory) -> tuple[dict[str, Any], Path]:
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    results = train(validate(tiny_config(tiny_bert, tiny_classification_data, run_dir)))
    return results, run_dir


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_evaluate_run_reproduces_the_test_metrics_of_training(trained, capsys):
    results, run_dir = trained
    code, out, err = cli(capsys, "evaluate", "--run", str(run_dir), "--batch-size", "5")
    assert code == 0, err
    printed = json.loads(out)
    assert printed["examples"] == 32 and printed["output"] == str(run_dir / "eval" / "test")
    saved = json.loads((run_dir / "eval" / "test" / "metrics.json").read_text())
    for name in ("accuracy", "macro_f1", "micro_f1"):
        assert saved["metrics"][name] == pytest.approx(results["test"][name], abs=1e-9)
    assert saved["metrics"]["loss"] == pytest.approx(results["test"]["loss"], rel=1e-4)
    preds = read_jsonl(run_dir / "eval" / "test" / "predictions.jsonl")
    assert len(preds) == 32 and [p["index"] for p in preds] == list(range(32))
    correct = sum(p["label"] == p["input"]["label"] for p in preds)
    assert correct / 32 == pytest.approx(results["test"]["accuracy"])
    report = json.loads((run_dir / "eval" / "test" / "reports" / "test_classification_report.json").read_text())
    assert sum(map(sum, report["confusion_matrix"])) == 32


def test_evaluate_model_dir_with_task_and_data(trained, tiny_classification_data, tmp_path, capsys):
    results, run_dir = trained
    out_dir = tmp_path / "ev"
    code, _, err = cli(capsys, "evaluate", "--model", str(run_dir / "model"), "--task", "classification",
                         "--data", tiny_classification_data["validation"], "--output", str(out_dir))
    assert code == 0, err
    metrics = json.loads((out_dir / "metrics.json").read_text())["metrics"]
    assert metrics["accuracy"] == pytest.approx(results["validation"]["accuracy"], abs=1e-9)


def test_predict_writes_one_line_per_record_without_labels(trained, tiny_classification_data, tmp_path, capsys):
    results, run_dir = trained
    unlabeled = tmp_path / "new.jsonl"
    texts = ["this movie is great film", "this book is awful song", "this show is love music"]
    unlabeled.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    output = tmp_path / "preds.jsonl"
    code, out, err = cli(capsys, "predict", "--run", str(run_dir), "--data", str(unlabeled), "--output", str(output))
    assert code == 0, err
    assert json.loads(out)["predictions"] == 3
    preds = read_jsonl(output)
    assert [p["input"]["text"] for p in preds] == texts
    assert all(p["label"] in ("pos", "neg") and 0.5 <= p["confidence"] <= 1.0 for p in preds)

    # Labelled input: labels are ignored for prediction; predictions match evaluate's.
    output2 = tmp_path / "test_preds.jsonl"
    assert main(["predict", "--run", str(run_dir), "--data", tiny_classification_data["test"], "-o", str(output2)]) == 0
    capsys.readouterr()
    test_preds = read_jsonl(output2)
    accuracy = sum(p["label"] == p["input"]["label"] for p in test_preds) / len(test_preds)
    assert accuracy == pytest.approx(results["test"]["accuracy"])


def test_runs_lists_status_and_best_metric(trained, tmp_path, capsys):
    results, run_dir = trained
    root = run_dir.parent
    # An interrupted run: config + checkpoint, no results; and a crashed one (status.json says failed).
    interrupted = root / "group" / "interrupted"
    (interrupted / "checkpoints" / "step-00000010").mkdir(parents=True, exist_ok=True)
    (interrupted / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    (interrupted / "metrics.jsonl").write_text(json.dumps({"step": 10, "split": "validation", "accuracy": 0.5,
                                                           "loss": 0.7}) + "\n")
    failed = root / "failed"
    failed.mkdir(exist_ok=True)
    (failed / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    (failed / "status.json").write_text(json.dumps({"status": "failed"}))
    stale = root / "stale"
    stale.mkdir(exist_ok=True)
    (stale / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    (stale / "status.json").write_text(json.dumps({"status": "running"}))
    old = time.time() - 3600
    for p in stale.iterdir():
        os.utime(p, (old, old))

    code, out, err = cli(capsys, "runs", str(root), "--json")
    assert code == 0, err
    rows = {Path(r["run"]).name: r for r in json.loads(out)}
    assert rows["tiny"]["status"] == "completed" and rows["tiny"]["steps"] == 30
    assert rows["tiny"]["metric"] == "accuracy"
    assert rows["tiny"]["best"] == pytest.approx(results["best_metric"])
    assert rows["tiny"]["test"] == pytest.approx(results["test"]["accuracy"])
    assert rows["interrupted"]["status"] == "interrupted" and rows["interrupted"]["best"] == 0.5
    assert rows["failed"]["status"] == "failed"
    assert rows["stale"]["status"] == "interrupted"

    code, out, _ = cli(capsys, "runs", str(root))
    lines = out.splitlines()
    assert lines[0].split() == ["RUN", "TASK", "STATUS", "STEPS", "METRIC", "BEST", "TEST", "UPDATED"]
    tiny_line = next(line for line in lines if line.startswith("tiny "))
    assert "completed" in tiny_line and f"{results['best_metric']:.4f}" in tiny_line
    assert any(line.startswith("group/interrupted ") for line in lines)


def test_report_writes_png_curves_and_confusion_matrix(trained, capsys):
    _, run_dir = trained
    code, out, err = cli(capsys, "report", str(run_dir))
    assert code == 0, err
    reports = run_dir / "reports"
    for name in ("loss.png", "lr.png", "metrics.png", "test_confusion_matrix.png"):
        data = (reports / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE, name
        assert len(data) > 10_000, f"{name} is only {len(data)} bytes"
        assert f"wrote {reports / name}" in out
    from matplotlib.image import imread

    image = imread(reports / "loss.png")
    assert image.shape[0] > 300 and image.shape[1] > 600 and image.std() > 0.05  # not a blank canvas
    md = (reports / "report.md").read_text()
    assert "![confusion matrix](test_confusion_matrix.png)" in md
    assert "| pos |" in md and "| neg |" in md and "status: completed" in md


def test_report_and_evaluate_errors_say_what_to_change(trained, tmp_path, capsys):
    _, run_dir = trained
    code, _, err = cli(capsys, "evaluate", "--run", str(tmp_path / "nope"))
    assert code == 2 and "is not a run directory" in err and "--model" in err
    code, _, err = cli(capsys, "evaluate", "--model", str(tmp_path), "--data", "x.csv")
    assert code == 2 and "pass --task NAME" in err
    code, _, err = cli(capsys, "evaluate", "--model", str(run_dir / "model"), "--task", "clasification",
                       "--data", "x.csv")
    assert code == 2 and "did you mean 'classification'" in err
    empty = tmp_path / "empty-run"
    empty.mkdir()
    (empty / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    code, _, err = cli(capsys, "report", str(empty))
    assert code == 2 and "trackers: [jsonl" in err
    code, _, err = cli(capsys, "evaluate", "--run", str(empty))
    assert code == 2 and "has no exported model" in err
    code, _, err = cli(capsys, "runs", str(tmp_path / "missing"))
    assert code == 2 and "is not a directory" in err


def test_evaluate_adapter_run_loads_base_plus_adapter(tiny_bert, tiny_classification_data, tmp_path, capsys):
    from tuneforge.plugin_manager import PluginManager

    pm = PluginManager.default().build_registries()
    if "lora" not in [e.name for e in pm.adapters.entries()]:
        pytest.skip("no 'lora' adapter plugin installed")
    config = copy.deepcopy(tiny_config(tiny_bert, tiny_classification_data, tmp_path / "lora"))
    config["adapter"] = {"type": "lora", "r": 4, "alpha": 8}
    config["training"]["max_steps"] = 10
    config["evaluation"] = {"strategy": "no"}
    results = train(validate(config))
    run_dir = tmp_path / "lora"
    assert (run_dir / "model" / "adapter_config.json").is_file()
    code, out, err = cli(capsys, "evaluate", "--run", str(run_dir))
    assert code == 0, err
    metrics = json.loads(out)["metrics"]
    assert metrics["accuracy"] == pytest.approx(results["test"]["accuracy"], abs=1e-9)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["adapter"]["type"] == "lora"
