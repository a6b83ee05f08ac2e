"""An unwritable or nearly full output dir fails before training starts (no Runtime built)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest
import yaml

import tuneforge.distributed
from tuneforge import cli
from tuneforge.config import validate
from tuneforge.errors import ConfigError
from tuneforge.run import train


@pytest.fixture
def no_training(monkeypatch) -> None:
    """Building the Runtime (process group, model) is where training starts: it must not happen."""

    class Forbidden:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise AssertionError("training started although the output dir is unusable")

    monkeypatch.setattr(tuneforge.distributed, "create_runtime", Forbidden)


def test_output_dir_below_a_file_is_refused(tiny_classification_config, tmp_path: Path, no_training) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cfg = validate({**tiny_classification_config, "output": {"dir": str(blocker / "run")}})
    with pytest.raises(ConfigError, match=r"output.dir '.*a-file/run' is not writable"):
        train(cfg)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_output_dir_is_refused(tiny_classification_config, tmp_path: Path, no_training) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        cfg = validate({**tiny_classification_config, "output": {"dir": str(ro / "run")}})
        with pytest.raises(ConfigError, match="is not writable"):
            train(cfg)
    finally:
        ro.chmod(0o755)


def test_low_free_space_is_refused(tiny_classification_config, monkeypatch, no_training) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**30, 10 * 2**30 - 5 * 2**20, 5 * 2**20))
    cfg = validate(tiny_classification_config)
    with pytest.raises(ConfigError, match=r"has only 5 MiB free"):
        train(cfg)


def test_cli_reports_unwritable_output_dir_as_one_error(tiny_classification_config, tmp_path: Path,
                                                        no_training) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({**tiny_classification_config, "output": {"dir": str(blocker / "run")}}))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["train", "--config", str(path)])
    assert code == 2
    assert [ln for ln in err.getvalue().splitlines() if ln.startswith("error:")] == [
        f"error: output.dir '{blocker / 'run'}' is not writable: Not a directory"
    ]
