"""A `tuneforge meta` run killed (SIGKILL) in any phase continues from its last checkpoint
to the results of an uninterrupted run; a finished run is never overwritten by accident."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tuneforge.checkpoint import CheckpointManager
from tuneforge.cli import main
from tuneforge.config import validate
from tuneforge.errors import ConfigError
from tuneforge.meta.run import run_meta

HERE = Path(__file__).resolve().parent


def _config(base: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    cfg = copy.deepcopy(base)
    cfg["output"] = {"dir": str(run_dir), "save_every_n_steps": 1, "keep_last": 2}
    cfg["plugins"] = ["meta_faults"]
    cfg["trackers"] = ["jsonl", "kill"]
    return cfg


def _scores(results: dict[str, Any]) -> dict[str, Any]:
    """Everything in the meta-test table but the timings."""
    return {setting: {start: {k: v for k, v in cell.items() if k != "seconds"} for start, cell in row.items()}
            for setting, row in results["meta_test"].items()}


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def _lines(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _kill_during(cfg: dict[str, Any], tmp_path: Path, kill_at: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env.update(PYTHONPATH=os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", TF_META_KILL_AT=kill_at)
    return subprocess.run([sys.executable, "-m", "tuneforge.cli", "meta", "--config", str(path)], env=env,
                          capture_output=True, text=True, timeout=600)


# tiny_meta_config: 4 meta-steps, 4 multi-task steps, lines every 2 steps; run steps 1-4 are
# meta-training, 5-8 the multi-task baseline, 9 meta-val, 10 and 11 the two meta-test settings
@pytest.mark.parametrize(("kill_at", "last_checkpoint"), [
    ("meta_train:3", 3),  # killed when step 4 is logged: the checkpoint of step 4 is not written yet
    ("multitask_train:7", 7),
    ("meta_test:11", 10),  # the first setting is finished and kept
])
def test_killed_meta_run_resumes_to_the_uninterrupted_results(
    tiny_meta_config: dict[str, Any], tmp_path: Path, kill_at: str, last_checkpoint: int
) -> None:
    reference = run_meta(validate(_config(tiny_meta_config, tmp_path / "reference")))

    run_dir = tmp_path / "killed"
    cfg = _config(tiny_meta_config, run_dir)
    proc = _kill_during(cfg, tmp_path, kill_at)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert not (run_dir / "results.json").exists()
    kept = CheckpointManager(run_dir).complete()
    assert kept[-1].name == f"step-{last_checkpoint:08d}" and len(kept) == 2  # keep_last 2

    resumed = run_meta(validate({**cfg, "resume": "auto"}))
    assert resumed["resumed_from"] == str(kept[-1])
    assert _scores(resumed) == _scores(reference)
    assert resumed["meta_val"] == reference["meta_val"]
    assert resumed["final_meta_loss"] == reference["final_meta_loss"]
    for start in ("meta_start", "multitask_start"):
        a, b = _weights(run_dir / start), _weights(tmp_path / "reference" / start)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), start

    lines, expected = _lines(run_dir), _lines(tmp_path / "reference")
    keys = [(x["split"], x["step"]) for x in lines]
    assert len(keys) == len(set(keys))  # one history: what the killed attempt logged after step N is set aside
    assert sorted(keys) == sorted((x["split"], x["step"]) for x in expected)
    losses = {(x["split"], x["step"]): x["loss"] for x in lines if "loss" in x}
    assert losses == {(x["split"], x["step"]): x["loss"] for x in expected if "loss" in x}


def test_finished_meta_run_is_not_overwritten_and_resume_checks_settings(
    tiny_meta_config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = copy.deepcopy(tiny_meta_config)
    cfg["meta"].update({"val_episodes": 0, "eval": {"ways": [3], "shots": [1], "episodes": 3, "steps": 1}})
    first = run_meta(validate(cfg))
    start = Path(first["meta_start"])
    before = _weights(start)

    with pytest.raises(ConfigError, match=r"already holds checkpoints; continue it with resume=auto"):
        run_meta(validate(cfg))
    changed = copy.deepcopy(cfg)
    changed["meta"]["meta_steps"] = 6
    with pytest.raises(ConfigError, match=r"written with other settings \(meta\.meta_steps differ\)"):
        run_meta(validate({**changed, "resume": "auto"}))
    assert all(torch.equal(before[k], v) for k, v in _weights(start).items())

    path = tmp_path / "meta.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["meta", "--config", str(path), "--resume", "--json"]) == 0  # all done: nothing is retrained
    again = json.loads(capsys.readouterr().out)
    assert _scores(again) == _scores(first) and again["meta_train_seconds"] == first["meta_train_seconds"]
    fresh = run_meta(validate({**changed, "output": {**cfg["output"], "overwrite": True}}))
    assert fresh["final_meta_loss"] != first["final_meta_loss"]
