"""``tuneforge tune``: budget parsing and planning (pure), and a tiny run end to end."""

from __future__ import annotations

import json

import pytest

from tuneforge.cli import main
from tuneforge.commands.tune import PRUNED_COST, parse_budget, plan_budget
from tuneforge.errors import ConfigError


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("90s", 90),
                                               ("1.5h", 5400), ("10", 600)])
def test_parse_budget(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["soon", "10x", "0m", "m"])
def test_a_bad_budget_is_a_user_error(text):
    with pytest.raises(ConfigError, match="--budget"):
        parse_budget(text)


def test_plan_on_a_small_cpu_machine():
    # 30 min, a 60 s trial already run (70 s elapsed), 2 cores: 1 worker, a final run of 60 s
    plan = plan_budget(1800, 60, elapsed_s=70, cores=2)
    assert plan.workers == 1 and plan.final_seconds == 60
    assert plan.search_seconds == 1800 - 70 - 60
    assert plan.n_trials == 1 + int(1670 / (60 * PRUNED_COST))


def test_plan_on_cpus_shares_the_cores_and_on_gpus_gives_each_worker_its_own():
    cpu = plan_budget(600, 30, cores=16, final=False)
    assert cpu.workers == 4  # 2 threads per trial, at most 4
    assert cpu.n_trials == 1 + int(600 * 4 / (30 * 4 * PRUNED_COST))  # 4 at once, each 4x slower
    gpu = plan_budget(600, 30, cores=16, gpus=4, nproc=2, final=False, pruning=False)
    assert gpu.workers == 2 and gpu.n_trials == 1 + int(600 * 2 / 30)
    assert plan_budget(600, 30, cores=16, workers=3, final=False).workers == 3


def test_plan_when_the_budget_is_already_spent():
    plan = plan_budget(100, 60, elapsed_s=90, trials_done=1)
    assert plan.n_trials == 1 and plan.search_seconds == 0 and plan.workers == 1
    with pytest.raises(ConfigError):
        plan_budget(0, 10)


@pytest.mark.slow  # two tune runs with trial processes: ~70 s on 2 shared cores
def test_tune_end_to_end(search_config, tmp_path, monkeypatch, capsys):
    """Times the first trial, plans, runs the study, trains and exports the best recipe, reports."""
    monkeypatch.setenv("TUNEFORGE_LIBRARY", str(tmp_path / "lib"))
    path = search_config({"params": {"training.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
                          "trial": {"env": {"OMP_NUM_THREADS": "1"}}},
                         training={"max_steps": 6}, evaluation={"strategy": "steps", "every_n_steps": 3})
    assert main(["tune", "--config", str(path), "--budget", "5s"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["strategy"] == "tpe" and result["pruner"] == "successive_halving"
    assert result["plan"]["n_trials"] == 1 and result["trials"] == {"complete": 1}
    assert result["final"]["status"] == "completed"
    assert (tmp_path / "study" / "best" / "model").is_dir() and result["model_dir"]
    assert (tmp_path / "study" / "best" / "reports" / "report.md").is_file()
    # the study went into the library, so the next tune starts from a portfolio
    assert main(["library", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trials"] == 1
    path = search_config({"params": {"training.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
                          "dir": str(tmp_path / "study2"), "trial": {"env": {"OMP_NUM_THREADS": "1"}}},
                         name="again.yaml", training={"max_steps": 6},
                         evaluation={"strategy": "steps", "every_n_steps": 3})
    assert main(["tune", "--config", str(path), "--budget", "5s", "--no-final"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["strategy"] == "portfolio" and "final" not in again


def test_the_lora_causal_lm_space_is_valid_and_its_extremes_train(tiny_llama, tmp_path, tf_run):
    """configs/search-lora-causal-lm.yaml on the tiny Llama: the space passes the study's checks, and
    a run with every module adapted by regex, packing on and rank 32 trains."""
    from pathlib import Path

    import yaml

    from tuneforge.search.runner import StudyRunner
    from tuneforge.search.space import apply_params

    root = Path(__file__).resolve().parents[2]
    path = root / "configs" / "search-lora-causal-lm.yaml"
    overrides = [f"model.name_or_path={tiny_llama}", f"search.dir={tmp_path / 'study'}"]
    runner = StudyRunner(path, overrides)
    assert runner.space.keys == ["training.lr", "adapter.r", "adapter.alpha", "adapter.dropout",
                                 "adapter.target_modules", "training.epochs", "task.packing"]
    assert runner.objectives[0].metric == "validation.perplexity" and runner.objectives[0].direction == "minimize"
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw.pop("search")
    raw["model"]["name_or_path"] = tiny_llama
    for split in ("train", "validation"):
        raw["data"][split] = str(root / "configs" / raw["data"][split])
    for targets in (".*\\.(q_proj|k_proj|v_proj|o_proj)", "all-linear"):
        trial = apply_params(raw, {"adapter.r": 32, "adapter.target_modules": targets, "task.packing": True,
                                   "training.lr": 5e-2, "training.max_steps": 2})
        results, _ = tf_run(trial, overrides=[f"output.dir={tmp_path / targets[-4:]}"])
        assert results["status"] == "completed"
