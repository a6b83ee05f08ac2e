"""Resolving single/DDP/DeepSpeed and the DeepSpeed config, without starting processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tuneforge.config import validate
from tuneforge.distributed import build_deepspeed_config, resolve_strategy
from tuneforge.errors import ConfigError, DistributedError
from tuneforge.resume import resume_position


def config(**sections: dict[str, Any]) -> Any:
    raw: dict[str, Any] = {"model": {"name_or_path": "m"}, "task": {"name": "classification"},
                           "data": {"train": "t.csv"},
                           "training": {"batch_size": 8, "gradient_accumulation_steps": 2, "lr": 3e-4,
                                        "max_grad_norm": 0.5}}
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return validate(raw)


def test_single_and_ddp_follow_the_launcher() -> None:
    assert resolve_strategy(config(), env={}).kind == "single"
    s = resolve_strategy(config(), env={"WORLD_SIZE": "4", "LOCAL_RANK": "0"})
    assert (s.kind, s.world_size, s.backend) == ("ddp", 4, "gloo")
    assert resolve_strategy(config(), env={"OMPI_COMM_WORLD_SIZE": "3"}).world_size == 3


def test_generated_deepspeed_config_fills_every_auto_value() -> None:
    s = resolve_strategy(config(distributed={"strategy": "deepspeed", "zero_stage": 3, "offload_params": True,
                                             "offload_optimizer": True}), env={"WORLD_SIZE": "2"})
    ds = s.deepspeed_config
    assert (s.kind, s.zero_stage, s.offload_params) == ("deepspeed", 3, True)
    assert ds["train_micro_batch_size_per_gpu"] == 8 and ds["gradient_accumulation_steps"] == 2
    assert ds["train_batch_size"] == 8 * 2 * 2 and ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] is False and ds["fp16"]["enabled"] is False
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_param"]["device"] == "cpu"
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["stage3_gather_16bit_weights_on_model_save"]
    assert "optimizer" not in ds and "scheduler" not in ds


def test_the_launcher_picks_deepspeed_and_fills_defaults_but_conflicts_are_errors() -> None:
    env = {"WORLD_SIZE": "2", "LOCAL_RANK": "0", "ACCELERATE_USE_DEEPSPEED": "true",
           "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}
    s = resolve_strategy(config(), env=env)
    assert (s.kind, s.zero_stage) == ("deepspeed", 3)
    with pytest.raises(DistributedError, match=r"launcher sets ZeRO stage 3 but distributed.zero_stage=1"):
        resolve_strategy(config(distributed={"zero_stage": 1}), env=env)
    with pytest.raises(DistributedError, match=r"distributed.strategy is 'ddp'"):
        resolve_strategy(config(distributed={"strategy": "ddp"}), env=env)
    with pytest.raises(DistributedError, match=r"gradient_accumulation_steps=4 but training.gradient_accumulation"):
        resolve_strategy(config(), env={**env, "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"})


def test_user_json_is_filled_and_cross_checked(tmp_path: Path) -> None:
    good = tmp_path / "ds.json"
    good.write_text(json.dumps({
        "train_micro_batch_size_per_gpu": "auto", "gradient_clipping": "auto", "bf16": {"enabled": "auto"},
        "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": 0.0}},
    }))
    ds, stage, off_opt, off_par, conflicts = build_deepspeed_config(config(), 2, 1, False, False,
                                                                     json_path=str(good))
    assert conflicts == [] and (stage, off_opt, off_par) == (2, True, False)  # the JSON's stage/offload adopted
    assert ds["train_micro_batch_size_per_gpu"] == 8 and ds["gradient_clipping"] == 0.5
    assert ds["train_batch_size"] == 32 and ds["bf16"]["enabled"] is False
    assert "optimizer" not in ds  # tuneforge's AdamW is the same optimizer

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({
        "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2, "bf16": {"enabled": True},
        "zero_optimization": {"stage": 3}, "optimizer": {"type": "Lamb", "params": {"lr": 1e-3}},
        "scheduler": {"type": "WarmupLR"},
    }))
    cfg = config(distributed={"strategy": "deepspeed", "zero_stage": 2, "deepspeed_config": str(bad)})
    with pytest.raises(DistributedError) as err:
        resolve_strategy(cfg, env={"WORLD_SIZE": "2"})
    text = str(err.value)
    for expected in ("train_micro_batch_size_per_gpu = 4 but training.batch_size=8",
                     "bf16.enabled = True but training.mixed_precision=no",
                     "zero_optimization.stage = 3 but distributed.zero_stage=2",
                     "optimizer.type = 'Lamb'", "optimizer.params.lr = 0.001 but training.lr=0.0003",
                     "a scheduler section"):
        assert expected in text
    assert str(bad) in text


def test_bad_settings_are_refused_before_launch(tmp_path: Path) -> None:
    with pytest.raises(DistributedError, match="needs ZeRO stage 3"):
        resolve_strategy(config(distributed={"strategy": "deepspeed", "zero_stage": 2, "offload_params": True}), env={})
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_strategy(config(distributed={"strategy": "deepspeed", "deepspeed_config": str(tmp_path / "no.json")}),
                         env={})
    with pytest.raises(DistributedError, match="needs CUDA"):
        resolve_strategy(config(distributed={"backend": "nccl"}), env={})


def test_accelerate_cpu_single_process_launcher_is_detected() -> None:
    env = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    with pytest.raises(DistributedError, match=r"starts ONE process here.*--multi_gpu"):
        resolve_strategy(config(), env=env)


def test_resume_position_maps_samples_across_world_sizes(tmp_path: Path) -> None:
    saved = {"batch_in_epoch": 3, "world_size": 2, "micro_batch_size": 8, "epoch": 0}
    assert resume_position(saved, 2, 8, tmp_path) == 3
    assert resume_position(saved, 1, 16, tmp_path) == 3  # 48 samples either way
    assert resume_position(saved, 1, 8, tmp_path) == 6
    with pytest.raises(DistributedError, match="48 samples into epoch 0"):
        resume_position(saved, 4, 8, tmp_path)
