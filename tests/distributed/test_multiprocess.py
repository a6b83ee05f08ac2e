"""Real multi-process runs (gloo on CPU, 2 ranks): sharding, equality with one process,
ZeRO 1/2/3, checkpoints and resume, export, multi-node, and launcher failures.

Every 2-rank run must reproduce the single-process reference run (batch 2B on one rank)
step for step: equal losses within 1e-4 prove the data is sharded (no rank sees the
whole dataset) and gradients are averaged exactly once.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import BATCH, N_EVAL, STEPS, make_config
from launching import (
    REPO,
    accelerate_launch,
    check,
    finish,
    probes,
    run,
    start,
    torchrun,
    train_args,
    train_losses,
    worker_env,
    write_config,
)

from tuneforge.distributed import free_port

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]
TOL = 1e-4


def assert_same_losses(run_dir: Path, reference: Path, first_step: int = 1) -> float:
    got = train_losses(run_dir) if first_step == 1 else resumed_losses(run_dir)
    want = train_losses(reference)[first_step - 1 :]
    assert len(got) == len(want), (got, want)
    diff = max(abs(a - b) for a, b in zip(got, want))
    assert diff < TOL, f"loss curves differ by {diff}: {got} vs {want}"
    print(f"{run_dir.parent.name}: max |loss - reference| over {len(got)} steps = {diff:.2e}")
    return diff


def resumed_losses(run_dir: Path) -> list[float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r["loss"] for r in rows if r.get("split") == "train"]


def exported_state(model_dir: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(model_dir).state_dict()


def assert_same_weights(a: Path, b: Path) -> float:
    sa, sb = exported_state(a), exported_state(b)
    assert sa.keys() == sb.keys()
    diff = max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)
    assert diff < TOL, f"exported weights differ by {diff}"
    print(f"{a.parent.name}: max |weight - reference| = {diff:.2e}")
    return diff


def assert_eval_counted_once(run_dir: Path, reference: Path) -> None:
    report = json.loads((run_dir / "reports" / "test_classification_report.json").read_text())
    assert sum(map(sum, report["confusion_matrix"])) == N_EVAL  # no duplicated padding samples
    got = json.loads((run_dir / "results.json").read_text())["test"]
    want = json.loads((reference / "results.json").read_text())["test"]
    assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-9)
    assert got["loss"] == pytest.approx(want["loss"], abs=TOL)


def assert_rank0_only_writes(run_dir: Path, world: int = 2) -> dict[int, dict[str, Any]]:
    seen = probes(run_dir)
    assert sorted(seen) == list(range(world))
    assert seen[0]["trackers"] >= 1 and all(seen[r]["trackers"] == 0 for r in range(1, world))
    assert all(p["world"] == world and p["steps"] == STEPS for p in seen.values())
    train_losses(run_dir)  # one metrics row per step: only rank 0 logged
    assert len(json.loads((run_dir / "results.json").read_text())) > 0
    return seen


# -- sharding under each launcher ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("launcher", "strategy"),
    [("torchrun", "ddp"), ("accelerate-config", "ddp"), ("accelerate-config", "zero3")],
)
def test_each_rank_sees_a_disjoint_shard(launcher: str, strategy: str, tmp_path: Path) -> None:
    cfg = {"model": {"name_or_path": "unused"}, "task": {"name": "classification"},
           "data": {"train": "unused.csv"}, "training": {"batch_size": 4, "seed": 0}}
    if strategy == "zero3":
        cfg["distributed"] = {"strategy": "auto"}  # DeepSpeed and its stage come from the accelerate config
    path = write_config(tmp_path / "shard.yaml", cfg)
    worker = [str(REPO / "tests" / "distributed" / "shard_worker.py"), str(path), str(tmp_path / "out")]
    if launcher == "torchrun":
        cmd = torchrun(2, *worker)
    else:
        name = "deepspeed_zero3.yaml" if strategy == "zero3" else "ddp.yaml"
        cmd = accelerate_launch(REPO / "launch" / "accelerate" / name, *worker)
    check(run(cmd))
    shards = [json.loads((tmp_path / "out" / f"shard-rank-{r}.json").read_text()) for r in (0, 1)]
    assert all(s["world"] == 2 for s in shards)
    a, b = (set(s["indices"]) for s in shards)
    assert len(shards[0]["indices"]) == len(a) == 20 and len(b) == 20
    assert not a & b and a | b == set(range(40))
    if strategy == "zero3":
        assert {s["kind"] for s in shards} == {"DEEPSPEED"}
        assert {s["optimizer"] for s in shards} == {"DeepSpeedZeroOptimizer_Stage3"}
    else:
        assert {s["kind"] for s in shards} == {"MULTI_CPU"}


# -- DDP ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ddp_run(mp_config: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tuneforge train --nproc 2`: 2 ranks x batch 8."""
    run_dir = tmp_path_factory.mktemp("ddp") / "run"
    path = make_config(mp_config, run_dir)
    check(run([sys.executable, "-m", "tuneforge.cli", "train", "--config", str(path), "--nproc", "2"]))
    return run_dir


def test_ddp_equals_one_process_with_double_batch(ddp_run: Path, reference_run: Path) -> None:
    assert_same_losses(ddp_run, reference_run)
    seen = assert_rank0_only_writes(ddp_run)
    assert seen[0]["kind"] == "MULTI_CPU"
    assert seen[0]["params_sha256"] == seen[1]["params_sha256"]  # identical parameters on every rank
    assert_eval_counted_once(ddp_run, reference_run)
    assert_same_weights(ddp_run / "model", reference_run / "model")


def test_ddp_resumes_at_a_different_world_size(ddp_run: Path, reference_run: Path, tmp_path: Path) -> None:
    """2 ranks x 8 stopped at step 3, continued by 1 rank x 16: steps 4-6 equal the reference."""
    run_dir = tmp_path / "run"
    shutil.copytree(ddp_run, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / f"step-{STEPS:08d}")
    (run_dir / "metrics.jsonl").unlink()
    shutil.rmtree(run_dir / "model")
    cfg = yaml.safe_load((ddp_run.parent / "run.yaml").read_text())
    cfg["training"]["batch_size"] = 2 * BATCH
    cfg["resume"] = "auto"
    path = write_config(tmp_path / "resume.yaml", cfg | {"output": {**cfg["output"], "dir": str(run_dir)}})
    check(run([sys.executable, *train_args(path)]))
    assert_same_losses(run_dir, reference_run, first_step=4)
    assert_same_weights(run_dir / "model", reference_run / "model")


@pytest.mark.parametrize("accelerate_config", ["ddp.yaml", "deepspeed_zero3.yaml"])
def test_accelerate_launch_trains_like_one_process(accelerate_config: str, mp_config: dict[str, Any],
                                                  reference_run: Path, tmp_path: Path) -> None:
    """The documented entry point: `accelerate launch --config_file launch/accelerate/X launch/run.py
    --config run.yaml`, a whole run (the strategy comes from the accelerate config)."""
    run_dir = tmp_path / "run"
    path = make_config(mp_config, run_dir, distributed={"strategy": "auto"}, output={"export": False})
    check(run(accelerate_launch(REPO / "launch" / "accelerate" / accelerate_config, *train_args(path))))
    assert_same_losses(run_dir, reference_run)
    seen = assert_rank0_only_writes(run_dir)
    assert {p["kind"] for p in seen.values()} == ({"DEEPSPEED"} if "deepspeed" in accelerate_config else {"MULTI_CPU"})
    assert_eval_counted_once(run_dir, reference_run)


def test_multi_node_on_one_machine_equals_one_node(mp_config: dict[str, Any], reference_run: Path,
                                                    tmp_path: Path) -> None:
    """Two torchrun "nodes" of one process each, c10d rendezvous on 127.0.0.1."""
    run_dir = tmp_path / "run"
    path = make_config(mp_config, run_dir, output={"export": False})
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [
        start([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
               "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint,
               "--rdzv_id", "tuneforge-test", *train_args(path)])
        for rank in (0, 1)
    ]
    outputs = finish(nodes)
    assert all(p.returncode == 0 for p in nodes), "\n".join(o[-4000:] for o in outputs)
    assert_same_losses(run_dir, reference_run)
    seen = assert_rank0_only_writes(run_dir)
    assert seen[0]["params_sha256"] == seen[1]["params_sha256"]


# -- DeepSpeed ZeRO ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zero_runs(mp_config: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """torchrun, 2 ranks x batch 8, ZeRO stage 1, 2 and 3 (run lazily, once each)."""
    cache: dict[int, Path] = {}

    def get(stage: int) -> Path:
        if stage not in cache:
            run_dir = tmp_path_factory.mktemp(f"zero{stage}") / "run"
            path = make_config(mp_config, run_dir, distributed={"strategy": "deepspeed", "zero_stage": stage},
                               output={"export": stage == 3})
            check(run(torchrun(2, *train_args(path))))
            cache[stage] = run_dir
        return cache[stage]

    return get  # type: ignore[return-value]


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_equals_one_process_with_double_batch(stage: int, zero_runs: Any, reference_run: Path) -> None:
    run_dir = zero_runs(stage)
    assert_same_losses(run_dir, reference_run)
    seen = assert_rank0_only_writes(run_dir)
    assert {p["kind"] for p in seen.values()} == {"DEEPSPEED"}
    expected = "DeepSpeedZeroOptimizer_Stage3" if stage == 3 else "DeepSpeedZeroOptimizer"
    assert {p["optimizer"] for p in seen.values()} == {expected}
    assert {p["offload_optimizer"] for p in seen.values()} == {False}
    if stage < 3:
        assert seen[0]["params_sha256"] == seen[1]["params_sha256"]
    assert_eval_counted_once(run_dir, reference_run)
    ckpt = run_dir / "checkpoints" / f"step-{STEPS:08d}"
    assert sorted(p.name for p in (ckpt / "pytorch_model").glob("*optim_states.pt")) == [
        f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)
    ]
    if stage == 3:  # export gathered the partitioned weights on rank 0
        assert_same_weights(run_dir / "model", reference_run / "model")


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_with_cpu_offload_equals_one_process(stage: int, mp_config: dict[str, Any], reference_run: Path,
                                                  tmp_path: Path) -> None:
    """ZeRO-Offload (stage 2: optimizer) and ZeRO-Infinity-style offload (stage 3: optimizer and
    parameters) really run in DeepSpeed's optimizer and train the same as one process."""
    run_dir = tmp_path / "run"
    distributed = {"strategy": "deepspeed", "zero_stage": stage, "offload_optimizer": True,
                   "offload_params": stage == 3}
    path = make_config(mp_config, run_dir, distributed=distributed, output={"export": stage == 3})
    check(run(torchrun(2, *train_args(path))))
    assert_same_losses(run_dir, reference_run)
    seen = assert_rank0_only_writes(run_dir)
    expected = "DeepSpeedZeroOptimizer_Stage3" if stage == 3 else "DeepSpeedZeroOptimizer"
    assert {p["optimizer"] for p in seen.values()} == {expected}
    assert {p["offload_optimizer"] for p in seen.values()} == {True}
    assert {p["offload_params"] for p in seen.values()} == {stage == 3}
    if stage == 3:
        assert_same_weights(run_dir / "model", reference_run / "model")


def test_zero_checkpoint_resumes(zero_runs: Any, reference_run: Path, tmp_path: Path) -> None:
    source = zero_runs(2)
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / f"step-{STEPS:08d}")
    (run_dir / "metrics.jsonl").unlink()
    path = source.parent / "run.yaml"
    check(run(torchrun(2, *train_args(path, f"output.dir={run_dir}", "resume=auto"))))
    assert_same_losses(run_dir, reference_run, first_step=4)


def test_zero_resume_at_another_world_size_is_refused(zero_runs: Any, tmp_path: Path) -> None:
    source = zero_runs(2)
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    result = run([sys.executable, *train_args(source.parent / "run.yaml", f"output.dir={run_dir}", "resume=auto",
                                              f"training.batch_size={2 * BATCH}")])
    assert result.returncode == 2, result.stdout[-3000:]
    assert "partitioned over 2 processes; this run has 1" in result.stdout


def test_lora_under_zero3_saves_a_non_empty_adapter(mp_config: dict[str, Any], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    run_dir = tmp_path / "run"
    path = make_config(mp_config, run_dir, distributed={"strategy": "deepspeed", "zero_stage": 3},
                       adapter={"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0,
                                "target_modules": ["query", "value"]},
                       output={"save_every_n_steps": None})
    check(run(torchrun(2, *train_args(path))))
    weights = load_file(run_dir / "model" / "adapter_model.safetensors")
    lora = {k: v for k, v in weights.items() if "lora_" in k}
    assert len(lora) == 2 * 2 * 2  # 2 layers x (query, value) x (A, B)
    assert all(v.numel() > 0 for v in lora.values())
    assert any(float(v.abs().sum()) > 0 for k, v in lora.items() if "lora_B" in k)  # trained (B starts at 0)


# -- launchers that cannot work are refused --------------------------------------------------


def test_rank_consistency_check_stops_every_rank(mp_config: dict[str, Any], tmp_path: Path) -> None:
    path = make_config(mp_config, tmp_path / "run")
    worker = str(REPO / "tests" / "distributed" / "per_rank_override.py")
    result = run(torchrun(2, worker, str(path)), env=worker_env(TF_RANK1_OVERRIDE="training.lr=0.5"))
    assert result.returncode != 0
    assert result.stdout.count("error: rank 1 differs from rank 0 in: training.lr") == 2, result.stdout[-3000:]


def test_accelerate_cpu_flag_is_refused(mp_config: dict[str, Any], tmp_path: Path) -> None:
    path = make_config(mp_config, tmp_path / "run")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
           *train_args(path)]
    result = run(cmd)
    assert result.returncode != 0
    assert "starts ONE process here" in result.stdout
