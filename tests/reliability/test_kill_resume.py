"""SIGKILL a real ``tuneforge train`` process, resume it, and get the uninterrupted run's losses.

Semantics checked here: ``resume=auto`` continues from the newest complete, verified
checkpoint; the resumed run rewrites ``metrics.jsonl`` so it holds one line per
(split, step) of a single history: lines the killed attempt logged after the resumed
step move to ``metrics.superseded.jsonl`` (nothing is deleted).
"""

from __future__ import annotations

import json
import random
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from fault_helpers import run_train, start_train, train_lines, train_losses

from tuneforge.checkpoint import CheckpointManager, verify

pytestmark = pytest.mark.multiprocess


@pytest.fixture
def reference(fault_config: dict[str, Any], tmp_path: Path) -> dict[int, float]:
    """Per-step losses of the same config run without interruption (also a subprocess)."""
    config = {**fault_config, "output": {**fault_config["output"], "dir": str(tmp_path / "reference")}}
    proc = run_train(config, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = train_losses(tmp_path / "reference")
    assert sorted(losses) == list(range(1, 31))
    return losses


def resumed_step(stderr: str) -> int:
    match = re.search(r"resumed from \S+ at step (\d+)", stderr)
    assert match, stderr[-3000:]
    return int(match.group(1))


def assert_same_history(run_dir: Path, reference: dict[int, float]) -> None:
    losses = train_losses(run_dir)
    assert sorted(losses) == sorted(reference)
    worst = max(abs(losses[s] - reference[s]) for s in reference)
    assert worst <= 1e-6, {s: (losses[s], reference[s]) for s in reference if abs(losses[s] - reference[s]) > 1e-6}


def test_sigkill_at_random_step_then_resume_matches_uninterrupted(
    fault_config: dict[str, Any], reference: dict[int, float], tmp_path: Path
) -> None:
    run_dir = Path(fault_config["output"]["dir"])
    kill_at = random.Random().randint(7, 24)
    proc = start_train(fault_config, tmp_path)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if (run_dir / "metrics.jsonl").is_file():
            steps = [x["step"] for x in train_lines(run_dir) if x["split"] == "train"]
            if steps and steps[-1] >= kill_at:
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill at step {kill_at}"
    killed_after = max(x["step"] for x in train_lines(run_dir) if x["split"] == "train")
    survivors = CheckpointManager(run_dir).complete()
    for path in survivors:
        verify(path)  # whatever was complete at the kill is intact

    resumed = run_train(fault_config, tmp_path, "resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    start = resumed_step(resumed.stderr)
    assert start % 5 == 0 and 5 <= start <= killed_after, (start, killed_after)
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["steps"] == 30
    assert_same_history(run_dir, reference)
    superseded = run_dir / "metrics.superseded.jsonl"
    if killed_after > start:  # the killed attempt's lines after the checkpoint are kept aside, not lost
        moved = [json.loads(x)["step"] for x in superseded.read_text().splitlines() if x.startswith("{")]
        assert max(moved) == killed_after and min(moved) > start
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))


def test_sigkill_during_checkpoint_write_resumes_from_previous(
    fault_config: dict[str, Any], reference: dict[int, float], tmp_path: Path
) -> None:
    run_dir = Path(fault_config["output"]["dir"])
    killed = run_train(fault_config, tmp_path, TF_FAULT_KILL_IN_CHECKPOINT="15")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    partial = run_dir / "checkpoints" / ".tmp-step-00000015"
    assert (partial / "KILLED_HERE").is_file() and not (partial / "manifest.json").exists()
    assert [p.name for p in CheckpointManager(run_dir).complete()][-1] == "step-00000010"

    resumed = run_train(fault_config, tmp_path, "resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed_step(resumed.stderr) == 10  # the previous checkpoint was used, and it loaded
    assert_same_history(run_dir, reference)
    assert not partial.exists()  # the half-written directory was cleaned up by the next save
    for path in CheckpointManager(run_dir).complete():
        verify(path)
