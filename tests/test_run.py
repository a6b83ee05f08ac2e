"""Unit tests of the run pipeline's pieces: preflight, builders, resume."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from tuneforge.builders import build_eval_loaders, build_optimizer, build_plugins, load_records, make_task
from tuneforge.checkpoint import CheckpointManager
from tuneforge.config import load_config_dict, validate
from tuneforge.errors import DataError, DistributedError
from tuneforge.preflight import has_evaluation, preflight
from tuneforge.resume import resume_position


def test_preflight_reads_every_data_file_with_the_task_reader(tiny_classification_config: dict[str, Any],
                                                             tmp_path: Path) -> None:
    cfg = copy.deepcopy(tiny_classification_config)
    plan = preflight(validate(cfg), check_output=False)
    assert set(plan.records) == {"train", "validation", "test"}
    assert len(plan.records["train"]) == 96 and len(plan.records["validation"]) == 32
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": "a"}\n{"text": broken\n', encoding="utf-8")
    cfg["data"]["validation"] = str(bad)
    with pytest.raises(DataError, match=r"bad\.jsonl.*line 2"):
        preflight(validate(cfg), check_output=False)


def test_validate_command_catches_a_malformed_line_before_training(
    tiny_classification_config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from tuneforge.cli import main

    cfg = copy.deepcopy(tiny_classification_config)
    bad = tmp_path / "train.csv"
    bad.write_text('text,label\n"unclosed quote,a\n', encoding="utf-8")
    cfg["data"]["train"] = str(bad)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["validate", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "train.csv" in err and len(err.strip().splitlines()) == 1


def test_load_records_reuses_what_preflight_read(tiny_classification_config: dict[str, Any]) -> None:
    config = validate(tiny_classification_config)
    task = make_task(config, build_plugins(config))
    given = {"train": [{"text": "x", "label": "a"}] * 3}
    records = load_records(config, task, given)
    assert records["train"] is given["train"]
    assert len(records["validation"]) == 32  # read from its file: not in `given`


def test_load_records_carves_validation_and_caps(tiny_classification_config: dict[str, Any]) -> None:
    cfg = copy.deepcopy(tiny_classification_config)
    del cfg["data"]["validation"]
    cfg["data"].update({"validation_fraction": 0.25, "max_train_samples": 10})
    config = validate(cfg)
    records = load_records(config, make_task(config, build_plugins(config)))
    assert len(records["validation"]) == 24 and len(records["train"]) == 10
    assert has_evaluation(config)
    assert not has_evaluation(validate({**cfg, "evaluation": {"strategy": "no"}}))


def test_eval_loaders_keep_order_for_every_split_but_train(tiny_classification_config: dict[str, Any]) -> None:
    config = validate(tiny_classification_config)
    task = make_task(config, build_plugins(config))
    feats = [{"input_ids": [1] * (i % 5 + 1), "labels": i} for i in range(7)]

    class Tok:
        pad_token_id = 0

    loaders = build_eval_loaders(config, task, Tok(), {"train": feats, "predict": feats, "test": []}, batch_size=3)
    assert list(loaders) == ["predict"]
    labels = torch.cat([b["labels"] for b in loaders["predict"]]).tolist()
    assert labels == list(range(7))


def test_optimizer_groups_decay_only_matrices(tiny_classification_config: dict[str, Any]) -> None:
    cfg = copy.deepcopy(tiny_classification_config)
    cfg["training"] = {"weight_decay": 0.1}
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, validate(cfg))
    decays = {len(g["params"]): g["weight_decay"] for g in opt.param_groups}
    assert decays == {1: 0.1, 3: 0.0}  # the weight matrix decays; bias, norm weight and bias do not


def test_resume_position_maps_world_sizes() -> None:
    saved = {"world_size": 2, "micro_batch_size": 4, "batch_in_epoch": 3, "epoch": 1}
    assert resume_position(saved, 2, 4, Path("c")) == 3
    assert resume_position(saved, 1, 8, Path("c")) == 3
    assert resume_position(saved, 4, 2, Path("c")) == 3
    with pytest.raises(DistributedError, match="cannot continue there exactly"):
        resume_position(saved, 1, 5, Path("c"))


def test_env_overrides_apply_to_configs_built_by_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEFORGE_OVERRIDES", "training.lr=0.5")
    raw = {"model": {"name_or_path": "m"}, "task": {"name": "classification"}, "data": {"train": "t.csv"}}
    assert load_config_dict(raw, ["training.epochs=2"], source="command line").training.lr == 0.5


def test_fresh_run_dir_has_no_checkpoint(tmp_path: Path) -> None:
    assert CheckpointManager(tmp_path).complete() == []
