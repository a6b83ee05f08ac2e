"""`tuneforge meta` on 2 gloo ranks: episodes are spread over ranks and meta-gradients
averaged, so the meta-learned start and the meta-test scores match a 1-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tuneforge.config import validate
from tuneforge.distributed import free_port
from tuneforge.meta.run import run_meta


@pytest.mark.multiprocess
def test_two_ranks_match_one_process(tiny_meta_config: dict[str, Any], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    single = run_meta(validate(tiny_meta_config))
    cfg = {**tiny_meta_config, "output": {"dir": str(tmp_path / "two-ranks")}}
    path = tmp_path / "meta.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ACCELERATE_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_", "TORCHELASTIC"))}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "tuneforge.cli", "meta", "--config", str(path), "--json"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    two = json.loads((tmp_path / "two-ranks" / "results.json").read_text())
    assert two["world_size"] == 2
    for setting, row in single["meta_test"].items():
        for start in ("meta", "pretrained", "multitask"):
            if start == "multitask":  # each rank draws its own batch: a different (larger) effective batch
                continue
            assert two["meta_test"][setting][start]["accuracy"] == pytest.approx(row[start]["accuracy"], abs=1e-6)
    a = load_file(str(Path(single["meta_start"]) / "model.safetensors"))
    b = load_file(str(tmp_path / "two-ranks" / "meta_start" / "model.safetensors"))
    moved = [k for k in a if not k.startswith("pooler.")]
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in moved)
