"""Start real worker processes for the distributed tests: free ports, a timeout on
every launch, and the whole process group killed when anything goes wrong."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tuneforge.distributed import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TIMEOUT = int(os.environ.get("TUNEFORGE_MP_TIMEOUT", "600"))


def worker_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ACCELERATE_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_", "TORCHELASTIC"))}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env.update(extra)
    return env


def run(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: int = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in its own process group; on timeout kill the group and fail loudly."""
    proc = subprocess.Popen(cmd, env=env or worker_env(), cwd=cwd or REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"timed out after {timeout}s: {' '.join(cmd)}\n{out[-6000:]}") from None
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def start(cmd: list[str], *, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``cmd`` in the background (own process group); finish it with :func:`finish`."""
    return subprocess.Popen(cmd, env=env or worker_env(), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(procs: list[subprocess.Popen[str]], timeout: int = TIMEOUT) -> list[str]:
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=timeout)
            outputs.append(out)
    except BaseException:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        raise
    return outputs


def torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args]


def accelerate_launch(config_file: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
            "--main_process_port", str(free_port()), *args]


def train_args(config_path: Path, *overrides: str) -> list[str]:
    return [str(REPO / "launch" / "run.py"), "--config", str(config_path), *overrides]


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def check(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {' '.join(result.args)}\n{result.stdout[-8000:]}"
    return result.stdout


def train_losses(run_dir: Path) -> list[float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train = [r for r in rows if r.get("split") == "train"]
    assert [r["step"] for r in train] == list(range(1, len(train) + 1)), "one train row per step, rank 0 only"
    return [r["loss"] for r in train]


def probes(run_dir: Path) -> dict[int, dict[str, Any]]:
    return {int(p.stem.split("-")[-1]): json.loads(p.read_text()) for p in run_dir.glob("probe-rank-*.json")}
