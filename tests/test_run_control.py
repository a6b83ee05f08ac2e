"""The run's control channel (``run.request_stop``, ``run.set_hyperparameters``) and what an
undefined metric becomes in the files and lines other programs read."""

from __future__ import annotations

import json
import math
import types
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tuneforge import cli, hookimpl, jsonio
from tuneforge.distributed import unwrap
from tuneforge.loop import RunContext

pytestmark = pytest.mark.usefixtures("tf_single_thread")


def context(optimizer: Any, scheduler: Any) -> RunContext:
    """A RunContext with only what set_hyperparameters touches."""
    runtime = types.SimpleNamespace(unwrap=unwrap)  # the Runtime method it uses
    return RunContext(None, Path("."), runtime, None, None, None, None, None, None, None,  # type: ignore[arg-type]
                      optimizer=optimizer, scheduler=scheduler)


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "accelerate-wrapped"])
def test_set_hyperparameters_keeps_the_schedule_position(wrapped: bool) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (20 - s) / 20)
    for _ in range(10):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5)
    # Accelerate's AcceleratedScheduler keeps the schedule in .scheduler
    run = context(opt, types.SimpleNamespace(scheduler=sched) if wrapped else sched)
    run.set_hyperparameters(lr=4e-3, weight_decay=0.1, eps=1e-6)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2e-3, 2e-3])
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert [g["eps"] for g in opt.param_groups] == [1e-6, 1e-6]
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(4e-3 * 9 / 20)
    run.set_hyperparameters(eps=1e-5)  # only what is given changes
    assert opt.param_groups[0]["lr"] == pytest.approx(4e-3 * 9 / 20) and opt.param_groups[0]["weight_decay"] == 0.1


class StopsAtFirstEvaluation:
    """Steers only through the control channel: halves the lr at fit start, stops at the first evaluation."""

    def __init__(self) -> None:
        self.lr_at_start: float | None = None

    @hookimpl
    def tf_on_fit_start(self, run: RunContext) -> None:
        run.set_hyperparameters(lr=run.config.training.lr / 2)
        self.lr_at_start = run.optimizer.param_groups[0]["initial_lr"]

    @hookimpl
    def tf_on_evaluate(self, run: RunContext, step: int, split: str, metrics: dict[str, float]) -> None:
        if split == "validation":
            run.request_stop(f"seen enough at step {step}", status="pruned")
            run.request_stop("a later request", status="ignored")


def test_request_stop_ends_the_run_cleanly_after_the_step(tf_run, tiny_classification_config, tf_hook_recorder):
    plugin = StopsAtFirstEvaluation()
    results, run_dir = tf_run(tiny_classification_config, plugins=[tf_hook_recorder, plugin],
                              overrides=["training.max_steps=12", "evaluation.every_n_steps=4",
                                         "output.save_every_n_steps=4"])
    assert results["status"] == "pruned" and results["steps"] == 4
    assert plugin.lr_at_start == pytest.approx(tiny_classification_config["training"]["lr"] / 2)
    names = tf_hook_recorder.names()
    assert "tf_on_exception" not in names and names[-2:] == ["tf_on_fit_end", "tf_on_evaluate"]  # then the test split
    (result,) = [kw["result"] for name, kw in tf_hook_recorder.calls if name == "tf_on_fit_end"]
    assert result.status == "pruned"
    assert [kw["step"] for name, kw in tf_hook_recorder.calls if name == "tf_on_checkpoint"] == [4, 4]  # best, periodic
    assert (run_dir / "checkpoints" / "step-00000004").is_dir()
    assert json.loads((run_dir / "results.json").read_text())["status"] == "pruned"
    train_lr = [json.loads(x)["lr"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()
                if json.loads(x)["split"] == "train"]
    assert max(train_lr) <= tiny_classification_config["training"]["lr"] / 2 + 1e-12


# -- an undefined metric ------------------------------------------------------------------------


@hookimpl
def tf_register_metrics(register: Any) -> None:
    """This module is also a plugin (``plugins: [test_run_control]``): a metric that is undefined."""
    register("undefined", lambda predictions, references: float("nan"))


def strict_loads(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise AssertionError(f"invalid JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_jsonio_writes_non_finite_floats_as_null() -> None:
    payload = {"a": float("nan"), "b": [1.0, float("inf"), {"c": -math.inf}], "d": (0.5, "x"), "e": None}
    assert strict_loads(jsonio.dumps(payload)) == {"a": None, "b": [1.0, None, {"c": None}], "d": [0.5, "x"],
                                                   "e": None}


def test_an_undefined_metric_is_null_in_stdout_and_the_run_files(tiny_classification_config, tmp_path, capsys):
    raw = {**tiny_classification_config, "plugins": ["test_run_control"],
           "evaluation": {"strategy": "steps", "every_n_steps": 5, "extra_metrics": ["undefined"],
                          "metric": "undefined"},
           "training": {**tiny_classification_config["training"], "max_steps": 5}}
    path = tmp_path / "nan.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert cli.main(["train", "--config", str(path)]) == 0
    line = strict_loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["test"]["undefined"] is None and line["test"]["accuracy"] >= 0
    assert line["best_metric"] is None  # an undefined value is never the best
    run_dir = Path(raw["output"]["dir"])
    results = strict_loads((run_dir / "results.json").read_text())
    assert results["validation"]["undefined"] is None and results["test"]["undefined"] is None
    logged = [strict_loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["undefined"] for x in logged if x["split"] in ("validation", "test")] == [None, None]
    assert results["best_step"] is None
