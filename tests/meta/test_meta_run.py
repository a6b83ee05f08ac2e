"""A tiny meta-train / meta-test run end to end (tiny random BERT, keyword labels)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from meta_data import KEYWORDS, write_many_label_csv

from tuneforge.cli import main
from tuneforge.config import validate
from tuneforge.errors import ConfigError
from tuneforge.meta.run import preflight_meta, run_meta


def _weights(directory: str | Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModel

    return {k: v.detach().clone() for k, v in AutoModel.from_pretrained(str(directory)).state_dict().items()}


def test_meta_run_end_to_end(tiny_meta_config: dict[str, Any], tiny_bert: str, tf_run, tiny_classification_config) -> None:
    results = run_meta(validate(tiny_meta_config))
    run_dir = Path(tiny_meta_config["output"]["dir"])
    assert results["status"] == "completed"
    assert set(results["meta_test"]) == {"3-way 1-shot", "3-way 2-shot"}
    for row in results["meta_test"].values():
        for start in ("meta", "pretrained", "multitask"):
            assert row[start]["episodes"] == 6
            assert 0.0 <= row[start]["accuracy"] <= 1.0 and row[start]["ci95"] >= 0.0
        diff = row["meta_minus_pretrained"]["accuracy"]
        assert diff == pytest.approx(row["meta"]["accuracy"] - row["pretrained"]["accuracy"], abs=2e-4)
    assert set(results["meta_val"]) == {"meta", "pretrained", "multitask"}
    assert json.loads((run_dir / "results.json").read_text())["meta_test"] == results["meta_test"]

    splits = json.loads((run_dir / "splits.json").read_text())
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (8, 3, 5)
    assert not set(splits["train"]) & set(splits["test"])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("split") == "meta_train"] == [2, 4]

    # the meta-learned start is an HF directory that differs from the pre-trained weights...
    start = Path(results["meta_start"])
    assert (start / "config.json").is_file() and (start / "tuneforge_meta.json").is_file()
    moved = _weights(start)
    base = _weights(tiny_bert)
    assert any(not torch.equal(moved[k], base[k]) for k in moved if k in base and not k.startswith("pooler."))
    # ...and `tuneforge train` starts from it
    cfg = copy.deepcopy(tiny_classification_config)
    cfg["model"]["name_or_path"] = str(start)
    cfg["training"]["max_steps"] = 4
    cfg["evaluation"] = {"strategy": "no"}
    trained, _ = tf_run(cfg)
    assert trained["status"] == "completed" and trained["steps"] == 4

    # same config, same numbers
    again_cfg = copy.deepcopy(tiny_meta_config)
    again_cfg["output"]["dir"] = str(run_dir.parent / "again")
    again = run_meta(validate(again_cfg))
    assert again["meta_test"]["3-way 2-shot"]["meta"]["accuracy"] == results["meta_test"]["3-way 2-shot"]["meta"]["accuracy"]


def test_top_layers_learns_only_the_top_layer(tiny_meta_config: dict[str, Any], tiny_bert: str) -> None:
    cfg = copy.deepcopy(tiny_meta_config)
    cfg["meta"].update({"algorithm": "fomaml", "learn": "top_layers", "top_layers": 1, "outer_lr": 1e-2,
                        "val_episodes": 0, "eval": {"ways": [3], "shots": [1], "episodes": 3, "steps": 1,
                                                    "baselines": ["pretrained"]}})
    results = run_meta(validate(cfg))
    assert set(results["meta_test"]["3-way 1-shot"]) == {"meta", "pretrained", "meta_minus_pretrained"}
    moved, base = _weights(results["meta_start"]), _weights(tiny_bert)
    changed = {k for k in moved if k in base and not k.startswith("pooler.") and not torch.equal(moved[k], base[k])}
    assert changed and all(k.startswith("encoder.layer.1.") for k in changed)


def test_cli_prints_table_and_reports_config_errors(tiny_meta_config: dict[str, Any], tmp_path: Path, capsys) -> None:
    cfg = copy.deepcopy(tiny_meta_config)
    cfg["meta"].update({"meta_steps": 1, "val_episodes": 0, "eval": {"ways": [3], "shots": [1], "episodes": 2,
                                                                      "steps": 1, "baselines": []}})
    path = tmp_path / "meta.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["meta", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "3-way 1-shot" in out and "meta-learned start:" in out

    assert main(["meta", "--config", str(path), "meta.algorithm=reptil"]) == 2
    assert "did you mean 'reptile'" in capsys.readouterr().err
    assert main(["meta", "--config", str(path), "meta.learn=adapter"]) == 2
    assert "adapter: section" in capsys.readouterr().err


def test_preflight_refuses_bad_collections(tiny_meta_config: dict[str, Any]) -> None:
    cfg = copy.deepcopy(tiny_meta_config)
    cfg["meta"]["collection"] = "tasks"
    with pytest.raises(ConfigError, match=r"needs meta\.tasks"):
        validate(cfg)
    cfg = copy.deepcopy(tiny_meta_config)
    cfg["meta"]["tasks"] = [{"name": "a", "task": {"name": "classification"}, "data": {"train": "x.csv"}}]
    with pytest.raises(ConfigError, match="need collection: tasks"):
        validate(cfg)
    cfg = copy.deepcopy(tiny_meta_config)
    cfg["task"] = {"name": "classificaton"}
    with pytest.raises(Exception, match="did you mean 'classification'"):
        preflight_meta(validate(cfg), check_output=False)


def test_listed_task_collection(tiny_meta_config: dict[str, Any], tmp_path: Path) -> None:
    full = write_many_label_csv(tmp_path / "all.csv", per_label=6)
    lines = full.read_text().splitlines()
    groups = {"src1": KEYWORDS[:5], "src2": KEYWORDS[5:10], "held": KEYWORDS[10:]}
    specs = {}
    for name, words in groups.items():
        keep = [ln for ln in lines[1:] if ln.split(",")[1].removesuffix("-intent") in words]
        (tmp_path / f"{name}.csv").write_text("sentence,intent\n" + "\n".join(keep) + "\n")
        specs[name] = {"name": name, "task": {"name": "classification", "text_field": "sentence",
                                              "label_field": "intent"}, "data": {"train": str(tmp_path / f"{name}.csv")}}
    cfg = copy.deepcopy(tiny_meta_config)
    cfg["data"] = {"max_length": 16}
    cfg["meta"].update({"collection": "tasks", "tasks": [specs["src1"], specs["src2"]], "test_tasks": [specs["held"]],
                        "val_episodes": 0, "eval": {"ways": [3], "shots": [1], "episodes": 3, "steps": 1}})
    del cfg["meta"]["val_labels"], cfg["meta"]["test_labels"]
    results = run_meta(validate(cfg))
    assert results["meta_test"]["3-way 1-shot"]["multitask"]["episodes"] == 3
    splits = json.loads((Path(cfg["output"]["dir"]) / "splits.json").read_text())
    assert sorted(splits["train"]) == ["src1", "src2"] and list(splits["test"]) == ["held"]


def test_adapter_mode_meta_learns_lora_and_exports_merged(tiny_meta_config: dict[str, Any], tiny_bert: str) -> None:
    pytest.importorskip("peft")
    from safetensors.torch import load_file

    cfg = copy.deepcopy(tiny_meta_config)
    cfg["adapter"] = {"type": "lora", "r": 4, "dropout": 0.0}
    cfg["meta"].update({"learn": "adapter", "meta_steps": 3, "outer_optimizer": "adam", "outer_lr": 1e-2,
                        "val_episodes": 0, "eval": {"ways": [3], "shots": [2], "episodes": 3, "steps": 1,
                                                    "baselines": ["pretrained"]}})
    results = run_meta(validate(cfg))
    assert results["learn"] == "adapter"
    exported = load_file(str(Path(results["meta_start"]) / "model.safetensors"))
    assert not any("lora" in k for k in exported)  # merged into plain weights
    base = _weights(tiny_bert)
    query = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(exported[query], base[query])  # the LoRA update reached the merged weights
    key = "embeddings.word_embeddings.weight"
    assert torch.equal(exported[key], base[key])  # frozen base weights untouched


def test_meta_run_fires_the_observer_hooks(tiny_meta_config: dict[str, Any], tf_hook_recorder: Any) -> None:
    from tuneforge.plugin_manager import PluginManager

    config = validate(tiny_meta_config)
    pm = PluginManager.default()
    pm.register(tf_hook_recorder, name="recorder")
    results = run_meta(config, pm)
    names = tf_hook_recorder.names()
    assert names[0] == "tf_on_fit_start" and names[-1] == "tf_on_fit_end"
    meta_steps = [kw["step"] for name, kw in tf_hook_recorder.calls if name == "tf_on_step_end"]
    assert meta_steps[: config.meta.meta_steps] == list(range(1, config.meta.meta_steps + 1))
    splits = {kw["split"] for name, kw in tf_hook_recorder.calls if name == "tf_on_evaluate"}
    assert splits == {"meta_val", "meta_test"}
    checkpoints = [kw["path"] for name, kw in tf_hook_recorder.calls if name == "tf_on_checkpoint"]
    assert checkpoints and all(Path(p).is_dir() for p in checkpoints[-1:])
    assert "tf_on_exception" not in names and results["status"] == "completed"


def test_meta_refuses_deepspeed_before_loading(tiny_meta_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from tuneforge.errors import DistributedError
    from tuneforge.meta.run import preflight_meta

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(DistributedError, match="DeepSpeed ZeRO is not supported"):
        preflight_meta(validate(tiny_meta_config), check_output=False)
