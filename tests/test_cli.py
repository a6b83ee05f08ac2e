"""The command line as a user meets it: exit codes and one-line errors, no tracebacks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).parents[1]


def tuneforge(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # a hub name fails at once instead of retrying for ~30 s
    return subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300, env=env
    )


@pytest.fixture
def config_file(tmp_path, tiny_classification_config):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_classification_config))
    return path


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("training.lrr=1", "unknown key 'training.lrr' (did you mean 'lr'?)"),
        ("training.batch_size=big", "'training.batch_size': Input should be a valid integer"),
        ("task.name=clasification", "unknown task 'clasification' (did you mean 'classification'?)"),
        ("adapter.type=nonexistent", "unknown adapter 'nonexistent'"),
        ("trackers=[jsonl, nope]", "unknown tracker 'nope'"),
        ("data.train=/does/not/exist.csv", "data.train: file '/does/not/exist.csv' does not exist"),
        ("model.name_or_path=no-such-org/no-such-model",
         "model.name_or_path: 'no-such-org/no-such-model' is not a local directory and could not be loaded from the "
         "Hugging Face hub"),
        ("evaluation.metric=acuracy", "task 'classification' does not produce 'acuracy' (did you mean 'accuracy'?)"),
        ("evaluation.extra_metrics=[mathews]", "no metric named 'mathews' (did you mean 'matthews'?)"),
    ],
)
def test_bad_config_is_one_error_line(config_file, override, expected):
    for command in ("validate", "train"):
        proc = tuneforge(command, "--config", str(config_file), override)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert expected in lines[0]
        assert "Traceback" not in proc.stderr


def test_validate_ok_and_plugins_listing(config_file):
    proc = tuneforge("validate", "--config", str(config_file))
    assert proc.returncode == 0 and "OK (task 'classification' from plugin 'classification'" in proc.stdout
    proc = tuneforge("plugins", "--json")
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["classification"]["package"] == "tuneforge"
    assert rows["classification"]["registers"]["tasks"] == ["classification"]
    assert "tf_register_trackers" in rows["trackers"]["hooks"]


def test_task_option_errors_name_the_task_key(config_file):
    proc = tuneforge("validate", "--config", str(config_file), "task.text_feild=x")
    assert proc.returncode == 2
    assert "unknown key 'task.text_feild' (did you mean 'text_field'?)" in proc.stderr


def test_output_dir_with_checkpoints_needs_resume_or_overwrite(config_file, tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000001"
    ckpt.mkdir(parents=True)
    (ckpt / "manifest.json").write_text("{}")
    proc = tuneforge("train", "--config", str(config_file))
    assert proc.returncode == 2
    assert "already holds checkpoints; continue it with resume=auto" in proc.stderr


def test_launch_script_runs_the_same_code_path(config_file):
    proc = subprocess.run(
        [sys.executable, str(REPO / "launch" / "run.py"), "--config", str(config_file), "training.lrr=1"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2 and "did you mean 'lr'?" in proc.stderr


def test_stdout_carries_only_the_json_result(config_file, tmp_path):
    # `tuneforge train ... | jq` must work: DeepSpeed, imported by the export (save_pretrained), logs a
    # warning through a handler on sys.stdout; it and any other library output belong on stderr.
    proc = tuneforge("train", "--config", str(config_file), "training.max_steps=4", "output.export=true")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    assert json.loads(lines[0])["status"] == "completed"
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    data = yaml.safe_load(config_file.read_text())["data"]["validation"]
    for args in (("evaluate", "--run", str(tmp_path / "run"), "--data", data),
                 ("predict", "--run", str(tmp_path / "run"), "--data", data, "--output", str(tmp_path / "p.jsonl"))):
        proc = tuneforge(*args)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert len(proc.stdout.splitlines()) == 1 and json.loads(proc.stdout), proc.stdout
