"""`tuneforge evaluate --config` / `predict --config`: the untrained base model a config builds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tuneforge.cli import main

pytestmark = pytest.mark.usefixtures("tf_single_thread")


def test_evaluate_config_scores_the_base_model(tiny_causal_lm_config: dict[str, Any], tiny_llama: str,
                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = {**tiny_causal_lm_config, "task": {"name": "causal_lm", "max_new_tokens": 4,
                                             "generation": {"scorers": ["exact_match"]}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["evaluate", "--config", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    run_dir = Path(cfg["output"]["dir"])
    assert Path(out["output"]) == run_dir / "zero-shot" / Path(cfg["data"]["test"]).stem
    assert {"exact_match", "perplexity"} <= set(out["metrics"])
    rows = (Path(out["output"]) / "reports" / "test_generations.jsonl").read_text().splitlines()
    assert len(rows) == out["examples"] > 0
    assert not (run_dir / "checkpoints").exists()  # nothing was trained
    # the base model's own scores: the same as evaluating the model directory itself
    assert main(["evaluate", "--model", tiny_llama, "--task", "causal_lm", "--data", cfg["data"]["test"],
                 "--output", str(tmp_path / "direct"), "data.max_length=48", "task.max_new_tokens=4",
                 "task.generation.scorers=[exact_match]"]) == 0
    direct = json.loads(capsys.readouterr().out)["metrics"]
    assert direct["loss"] == pytest.approx(out["metrics"]["loss"], abs=1e-6)
    assert direct["exact_match"] == out["metrics"]["exact_match"]


def test_evaluate_config_needs_a_valid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_evaluate_config_scores_the_capped_test_split_a_run_is_tested_on(
        tiny_causal_lm_config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # zero-shot and trained rows of a table must score the same records: data.max_test_samples caps
    # the config's test split, as in training; an explicit --data file is scored whole
    cfg = {**tiny_causal_lm_config, "data": {**tiny_causal_lm_config["data"], "max_test_samples": 3}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["evaluate", "--config", str(path)]) == 0
    capped = json.loads(capsys.readouterr().out)
    assert capped["examples"] == 3
    whole = len(Path(cfg["data"]["test"]).read_text(encoding="utf-8").splitlines())
    assert whole > 3
    assert main(["evaluate", "--config", str(path), "--data", cfg["data"]["test"],
                 "--output", str(tmp_path / "whole")]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == whole
