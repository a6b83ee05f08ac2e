"""Inject NaN/inf losses and NaN gradients; check both ``training.nan_policy`` values."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import fault_plugins
import pytest
import yaml
from safetensors.torch import load_file

from tuneforge import cli
from tuneforge.checkpoint import CheckpointManager, read_state, verify
from tuneforge.errors import TrainingError


@pytest.fixture
def nan_config(tiny_classification_config: dict[str, Any]) -> dict[str, Any]:
    cfg = {**tiny_classification_config, "task": {"name": "faulty-classification"}}
    cfg["training"] = {**cfg["training"], "max_steps": 12}
    cfg["evaluation"] = {"strategy": "no"}
    cfg["output"] = {**cfg["output"], "export": False}
    return cfg


def with_faults(cfg: dict[str, Any], steps: list[int], fault: str, policy: str, **training: Any) -> dict[str, Any]:
    return {**cfg, "task": {**cfg["task"], "fault_steps": steps, "fault": fault},
            "training": {**cfg["training"], "nan_policy": policy, **training}}


@pytest.mark.parametrize("fault", ["nan", "inf", "grad"])
def test_skip_policy_counts_skips_and_completes(tf_run, nan_config: dict[str, Any], fault: str) -> None:
    results, run_dir = tf_run(with_faults(nan_config, [3, 8], fault, "skip"), plugins=[fault_plugins])

    assert results["status"] == "completed" and results["steps"] == 12
    assert results["nonfinite_skips"] == 2
    final = CheckpointManager(run_dir).complete()[-1]
    assert read_state(final)["nonfinite_skips"] == 2
    losses = [x["loss"] for x in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
              if x["split"] == "train"]
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    weights = load_file(str(final / "model.safetensors"))
    assert all(bool(t.isfinite().all()) for t in weights.values())  # no NaN reached the parameters


def test_skip_policy_stops_after_max_nan_skips(tf_run, nan_config: dict[str, Any]) -> None:
    with pytest.raises(TrainingError, match="non-finite"):
        tf_run(with_faults(nan_config, [2, 4, 6], "nan", "skip", max_nan_skips=2), plugins=[fault_plugins])


@pytest.mark.parametrize("fault", ["nan", "grad"])
def test_stop_policy_raises_with_a_saved_checkpoint(tf_run, nan_config: dict[str, Any], fault: str) -> None:
    with pytest.raises(TrainingError) as info:
        tf_run(with_faults(nan_config, [7], fault, "stop"), plugins=[fault_plugins])
    message = str(info.value)
    assert "non-finite loss/gradients at step 7" in message and "nan_policy=skip" in message
    run_dir = Path(nan_config["output"]["dir"])
    last = CheckpointManager(run_dir).latest_valid()
    assert last is not None and last.name == "step-00000006" and str(last) in message
    verify(last)
    assert read_state(last)["step"] == 6 and read_state(last)["nonfinite_skips"] == 1
    assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"


def test_stop_policy_cli_prints_one_error_line_and_exits_2(nan_config: dict[str, Any], tmp_path: Path) -> None:
    cfg = with_faults(nan_config, [4], "nan", "stop")
    cfg["plugins"] = ["fault_plugins"]
    path = tmp_path / "nan.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["train", "--config", str(path)])
    lines = [ln for ln in err.getvalue().splitlines() if ln.startswith("error:")]
    assert code == 2
    assert len(lines) == 1 and "non-finite loss/gradients at step 4" in lines[0], err.getvalue()
    assert "Traceback" not in err.getvalue()
