"""Helpers of the fault tests: real ``tuneforge train`` subprocesses, and per-step
losses read back from ``metrics.jsonl``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent


def train_lines(run_dir: Path) -> list[dict[str, Any]]:
    text = (run_dir / "metrics.jsonl").read_text(encoding="utf-8")
    return [json.loads(x) for x in text.splitlines() if x.strip()]


def train_losses(run_dir: Path) -> dict[int, float]:
    """step -> loss; fails if a step was logged twice (metrics.jsonl keeps one history)."""
    lines = [x for x in train_lines(run_dir) if x["split"] == "train"]
    steps = [x["step"] for x in lines]
    assert len(steps) == len(set(steps)), f"steps logged more than once: {sorted(steps)}"
    return {x["step"]: x["loss"] for x in lines}


def cli_env(**extra: str) -> dict[str, str]:
    """Environment of a ``tuneforge train`` subprocess: this directory importable (fault_plugins),
    one torch thread (deterministic and kind to a shared CPU)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_FAULT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


def start_train(config: dict[str, Any], workdir: Path, *overrides: str, **env: str) -> subprocess.Popen[str]:
    path = workdir / f"config-{len(list(workdir.glob('config-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    cmd = [sys.executable, "-m", "tuneforge.cli", "train", "--config", str(path), *overrides]
    return subprocess.Popen(cmd, env=cli_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_train(config: dict[str, Any], workdir: Path, *overrides: str, **env: str) -> subprocess.CompletedProcess[str]:
    proc = start_train(config, workdir, *overrides, **env)
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
