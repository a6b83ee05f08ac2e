"""Corrupted, truncated and incomplete checkpoints are detected through the manifest
(sha256 + size), reported with a clear error, and skipped in favour of the previous one;
a resumed run then rewrites the steps after it without losing the damaged files."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from tuneforge.checkpoint import MANIFEST, CheckpointManager, verify
from tuneforge.errors import CheckpointError


@pytest.fixture
def trained(tf_run, tiny_classification_config: dict[str, Any]) -> tuple[Path, dict[int, float]]:
    """A 15-step run with checkpoints at 5, 10 and 15; returns (run_dir, step -> loss)."""
    cfg = {**tiny_classification_config, "evaluation": {"strategy": "no"},
           "training": {**tiny_classification_config["training"], "max_steps": 15}}
    cfg["output"] = {**cfg["output"], "save_every_n_steps": 5, "keep_last": 3, "export": False}
    _, run_dir = tf_run(cfg)
    losses = {x["step"]: x["loss"] for x in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
              if x["split"] == "train"}
    assert [p.name for p in CheckpointManager(run_dir).complete()] == ["step-00000005", "step-00000010",
                                                                       "step-00000015"]
    return run_dir, losses


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_detects_flipped_byte_truncation_missing_file_and_manifest(trained) -> None:
    run_dir, _ = trained
    ckpts = CheckpointManager(run_dir).complete()
    s5, s10, s15 = ckpts

    flip_byte(s15 / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors' fails its sha256 check \(corrupted\)"):
        verify(s15)
    optimizer = next(p for p in s10.iterdir() if p.name.startswith("optimizer"))
    optimizer.write_bytes(optimizer.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=rf"{optimizer.name}' has \d+ bytes, manifest says \d+"):
        verify(s10)
    assert verify(s5) is None

    rng = next(s5.glob("random_states_*.pkl"))
    backup = rng.read_bytes()
    rng.unlink()
    with pytest.raises(CheckpointError, match="is missing"):
        verify(s5)
    rng.write_bytes(backup)
    (s5 / MANIFEST).write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match="unreadable"):
        verify(s5)
    (s5 / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match=r"no manifest\.json: it was not completed"):
        verify(s5)
    assert CheckpointManager(run_dir).latest_valid() is None  # nothing valid left: a fresh start


def test_latest_valid_falls_back_and_resume_rewrites_the_lost_steps(tf_run, trained, tiny_classification_config,
                                                                    caplog) -> None:
    run_dir, straight = trained
    manager = CheckpointManager(run_dir)
    flip_byte(manager.complete()[-1] / "model.safetensors")  # step 15 corrupted
    with caplog.at_level(logging.WARNING):
        assert manager.latest_valid() == manager.root / "step-00000010"
    assert "fails its sha256 check" in caplog.text and "falling back to the previous checkpoint" in caplog.text

    with pytest.raises(CheckpointError, match="sha256"):
        manager.resolve(str(manager.root / "step-00000015"))  # an explicit corrupted path is an error

    cfg = {**tiny_classification_config, "evaluation": {"strategy": "no"},
           "training": {**tiny_classification_config["training"], "max_steps": 15}}
    cfg["output"] = {**cfg["output"], "save_every_n_steps": 5, "keep_last": 3, "export": False}
    results, _ = tf_run(cfg, overrides=["resume=auto"])

    assert results["status"] == "completed" and results["steps"] == 15
    fresh = manager.root / "step-00000015"
    verify(fresh)  # rewritten by the resumed run, not blocked by the corrupted directory
    kept = manager.root / ".superseded-step-00000015"
    with pytest.raises(CheckpointError):
        verify(kept)  # the damaged one is kept aside for inspection (no data deleted)
    resumed = {x["step"]: x["loss"] for x in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
               if x["split"] == "train"}
    assert sorted(resumed) == list(range(1, 16))
    assert max(abs(resumed[s] - straight[s]) for s in straight) <= 1e-6


def test_checkpoint_that_passes_checksums_but_does_not_load_is_a_checkpoint_error(
    tf_run, trained, tiny_classification_config
) -> None:
    """E.g. resuming with another label set (head shape): a clear CheckpointError, not a torch traceback."""
    run_dir, _ = trained
    other = run_dir.parent / "other-run"
    shutil.copytree(run_dir / "checkpoints", other / "checkpoints")
    cfg = {**tiny_classification_config, "evaluation": {"strategy": "no"},
           "task": {"name": "classification", "labels": ["neg", "pos", "neutral"]}}
    cfg["output"] = {**cfg["output"], "dir": str(other), "export": False}
    with pytest.raises(CheckpointError, match="could not be loaded"):
        tf_run(cfg, overrides=["resume=auto"])


def test_disk_full_during_a_checkpoint_keeps_the_previous_one_and_resume_continues(
        tf_run, trained, tiny_classification_config: dict[str, Any], tmp_path: Path, monkeypatch) -> None:
    """ENOSPC while writing the step-10 checkpoint: a one-line CheckpointError naming the intact
    step-5 checkpoint, no half-written directory left, and resume=auto reproduces the losses."""
    import errno

    import tuneforge.checkpoint as checkpoint

    _, reference = trained
    calls = {"n": 0}
    real_manifest = checkpoint.write_manifest

    def full_disk_on_second(directory: Path) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_manifest(directory)

    monkeypatch.setattr(checkpoint, "write_manifest", full_disk_on_second)
    cfg = {**tiny_classification_config, "evaluation": {"strategy": "no"},
           "training": {**tiny_classification_config["training"], "max_steps": 15}}
    cfg["output"] = {"dir": str(tmp_path / "disk-full"), "save_every_n_steps": 5, "keep_last": 3, "export": False}
    with pytest.raises(CheckpointError, match=r"step-00000010 \(No space left on device\); the last complete "
                                              r"checkpoint, .*step-00000005, is intact"):
        tf_run(cfg)
    ckpts = tmp_path / "disk-full" / "checkpoints"
    assert [p.name for p in CheckpointManager(tmp_path / "disk-full").complete()] == ["step-00000005"]
    assert not list(ckpts.glob(".tmp-*"))
    monkeypatch.setattr(checkpoint, "write_manifest", real_manifest)
    tf_run({**cfg, "resume": "auto"})
    losses = {x["step"]: x["loss"] for x in map(json.loads, (tmp_path / "disk-full" / "metrics.jsonl").read_text().splitlines())
              if x["split"] == "train"}
    assert sorted(losses) == list(range(1, 16))
    for step in range(6, 16):
        assert losses[step] == pytest.approx(reference[step], abs=1e-6)


def test_retention_keeps_the_last_n_plus_the_best(tmp_path: Path) -> None:
    """keep_last periodic checkpoints survive, older ones are pruned, and the best one stays
    (and is what `best()` names) however old it is."""
    manager = CheckpointManager(tmp_path, keep_last=2)

    def write(directory: Path) -> None:
        (directory / "weights.bin").write_bytes(directory.name.encode())

    for step in range(1, 7):
        manager.save(step, {"step": step}, write, lambda: None, is_best=step == 2)
    assert [p.name for p in manager.complete()] == ["step-00000002", "step-00000005", "step-00000006"]
    best = manager.best()
    assert best is not None and best.name == "step-00000002"
    assert (best / "weights.bin").read_bytes() == b".tmp-step-00000002"
    assert not list(manager.root.glob(".tmp-*"))


def test_a_run_keeps_its_best_checkpoint_and_tests_it(tf_run, tiny_classification_config: dict[str, Any]) -> None:
    cfg = {**tiny_classification_config, "output": {**tiny_classification_config["output"], "save_every_n_steps": 10,
                                                    "keep_last": 1, "export": False}}
    results, run_dir = tf_run(cfg)
    manager = CheckpointManager(run_dir)
    best = manager.best()
    assert best is not None and best.name == f"step-{results['best_step']:08d}"
    kept = [p.name for p in manager.complete()]
    assert kept[-1] == "step-00000040" and len(kept) == (1 if results["best_step"] == 40 else 2)
