"""Every built-in strategy runs a tiny study (cheap in-process objective), and the report is written.

The real subprocess path is covered in test_search_study.py; here each strategy's
sampler drives an Optuna study over a space parsed from a config, exactly as the
study runner uses it.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml

from tuneforge.config import SearchConfig, load_config
from tuneforge.plugin_manager import PluginManager
from tuneforge.search import Objective, SearchSpace
from tuneforge.search.report import leaderboard, write_report

SPACE = {
    "training.lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    "training.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.3, "step": 0.05},
    "training.batch_size": {"type": "int", "low": 8, "high": 64, "step": 8},
    "training.scheduler": {"type": "categorical", "choices": ["linear", "cosine", "constant"]},
}
OPT_LR = 1e-3


def score(p: dict) -> float:
    """Higher is better; optimum at lr=1e-3, warmup 0.1, batch 32, cosine."""
    return (-(math.log10(p["training.lr"]) + 3) ** 2 - 10 * (p["training.warmup_ratio"] - 0.1) ** 2
            - ((p["training.batch_size"] - 32) / 32) ** 2 + (0.3 if p["training.scheduler"] == "cosine" else 0.0))


@pytest.fixture(scope="module")
def strategies():
    return PluginManager.default().build_registries().search_strategies


def make_strategy(strategies, name, objectives, options=None, space=SPACE):
    space = SearchSpace.from_config(SearchConfig.model_validate({"params": space}))
    cls = strategies.get(name)
    return cls(cls.parse_options(options or {}, name), space, objectives, seed=0), space


def run_study(strategy, space, n, fn, directions):
    study = optuna.create_study(directions=directions, sampler=strategy.sampler())
    for _ in range(n):
        trial = study.ask()
        params = space.sample(trial, {})
        study.tell(trial, fn(params))
    return study


@pytest.mark.parametrize(("name", "options"), [
    ("random", {}), ("tpe", {"n_startup_trials": 4}), ("gp", {"n_startup_trials": 4}),
    ("cmaes", {"n_startup_trials": 3}), ("sobol", {}), ("qmc", {"qmc_type": "halton"}), ("reinforce", {}),
    ("nsga2", {"population_size": 4}),
])
def test_each_strategy_runs_a_tiny_study_within_bounds(strategies, name, options):
    strategy, space = make_strategy(strategies, name, [Objective("validation.accuracy", "maximize")], options)
    strategy.check()
    n = 7 if name == "gp" else 12  # a GP fit per trial is the expensive one
    study = run_study(strategy, space, n, score, ["maximize"])
    trials = study.get_trials()
    assert len(trials) == n and all(t.state.name == "COMPLETE" for t in trials)
    for t in trials:
        assert 1e-5 <= t.params["training.lr"] <= 1e-1
        assert t.params["training.batch_size"] % 8 == 0 and 8 <= t.params["training.batch_size"] <= 64
        assert t.params["training.scheduler"] in ("linear", "cosine", "constant")
        assert round(t.params["training.warmup_ratio"] / 0.05, 6) == round(t.params["training.warmup_ratio"] / 0.05)
    values = [t.value for t in trials]
    assert study.best_value == max(values) and len(set(values)) > n // 3  # explores: not one point resampled
    assert len({t.params["training.lr"] for t in trials}) > n // 3  # (NSGA-II's crossover inherits values)


def test_grid_enumerates_every_combination(strategies):
    space = {"training.lr": {"type": "categorical", "choices": [1e-4, 1e-3]},
             "training.batch_size": {"type": "int", "low": 8, "high": 16, "step": 8}}
    strategy, parsed = make_strategy(strategies, "grid", [Objective("validation.accuracy", "maximize")], space=space)
    strategy.check()
    sampler = strategy.sampler()
    study = optuna.create_study(direction="maximize", sampler=sampler)
    while not sampler.is_exhausted(study):
        trial = study.ask()
        p = parsed.sample(trial, {})
        study.tell(trial, p["training.batch_size"] * p["training.lr"])
    combos = {(t.params["training.lr"], t.params["training.batch_size"]) for t in study.trials}
    assert combos == {(1e-4, 8), (1e-4, 16), (1e-3, 8), (1e-3, 16)}


def test_nsga2_returns_a_pareto_front(strategies):
    objectives = [Objective("validation.accuracy", "maximize"), Objective("train_seconds", "minimize")]
    strategy, space = make_strategy(strategies, "nsga2", objectives, {"population_size": 4})
    study = run_study(strategy, space, 16, lambda p: (score(p), p["training.batch_size"] / 8.0),
                      ["maximize", "minimize"])
    front = study.best_trials
    assert front
    for a in front:  # no trial dominates a front member
        for b in study.trials:
            assert not (b.values[0] >= a.values[0] and b.values[1] <= a.values[1]
                        and (b.values[0] > a.values[0] or b.values[1] < a.values[1]))


def test_reinforce_policy_learns_the_rewarded_choice(strategies):
    space = {"training.scheduler": {"type": "categorical", "choices": ["linear", "cosine", "constant"]},
             "training.lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True}}
    strategy, parsed = make_strategy(strategies, "reinforce", [Objective("validation.accuracy", "maximize")],
                                     {"learning_rate": 0.5}, space=space)

    def reward(p):
        return (1.0 if p["training.scheduler"] == "cosine" else 0.0) - abs(math.log10(p["training.lr"]) + 2) / 3

    study = run_study(strategy, parsed, 60, reward, ["maximize"])
    last = study.trials[-20:]
    assert sum(t.params["training.scheduler"] == "cosine" for t in last) >= 14
    first = study.trials[:20]
    err = lambda ts: sum(abs(math.log10(t.params["training.lr"]) + 2) for t in ts) / len(ts)  # noqa: E731
    assert err(last) < err(first)
    # the policy is a function of the history only: a second sampler proposes the same next value
    s2 = strategies.get("reinforce")(strategy.options, parsed, strategy.objectives, seed=0).sampler()
    dist = optuna.distributions.CategoricalDistribution(["linear", "cosine", "constant"])
    p1 = strategy.sampler().policy(study, "training.scheduler", dist)["logits"]
    assert list(p1) == list(s2.policy(study, "training.scheduler", dist)["logits"])


def test_report_files_and_leaderboard(strategies, tiny_classification_config, tmp_path):
    strategy, space = make_strategy(strategies, "random", [Objective("validation.accuracy", "maximize")])
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize", sampler=strategy.sampler())
    study.set_user_attr("tuneforge", {"objectives": [["validation.accuracy", "maximize"]], "strategy": "random"})
    for i in range(6):
        trial = study.ask()
        p = space.sample(trial, {})
        trial.set_user_attr("steps", 40)
        if i == 2:
            trial.set_user_attr("error", "KeyError: 'nope'")
            trial.set_user_attr("exit_code", 1)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, score(p))
    runner = SimpleNamespace(study=study, study_dir=tmp_path / "out", base_raw={**tiny_classification_config,
                                                                                "search": {"params": SPACE}})
    written = write_report(runner)
    out = tmp_path / "out"
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 6 and rows[2]["state"] == "FAIL" and rows[2]["error"] == "KeyError: 'nope'"
    names = {Path(p).name for p in written["plots"]}
    assert {"optimization_history.png", "param_importances.png", "parallel_coordinate.png"} <= names
    for p in written["plots"]:
        assert Path(p).stat().st_size > 5000 and Path(p).read_bytes()[:4] == b"\x89PNG"
    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert "search" not in best and best["training"]["lr"] == study.best_params["training.lr"]
    cfg = load_config(out / "best_config.yaml")  # ready to train: validates as a run config
    assert cfg.training.scheduler == study.best_params["training.scheduler"]
    report = (out / "report.md").read_text()
    assert "## Failed trials" in report and "KeyError: 'nope'" in report and "plots/param_importances.png" in report
    board = leaderboard(study)
    assert board.splitlines()[0].startswith("study 's': 5 complete, 1 fail")
    assert board.splitlines()[2].startswith(f"{study.best_trial.number}*")


def test_multi_objective_report_has_pareto_plot_and_configs(strategies, tiny_classification_config, tmp_path):
    objectives = [Objective("validation.accuracy", "maximize"), Objective("trainable_params", "minimize")]
    strategy, space = make_strategy(strategies, "nsga2", objectives, {"population_size": 4})
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=strategy.sampler())
    study.set_user_attr("tuneforge", {"objectives": [[o.metric, o.direction] for o in objectives]})
    for _ in range(8):
        trial = study.ask()
        p = space.sample(trial, {})
        study.tell(trial, (score(p), float(p["training.batch_size"])))
    runner = SimpleNamespace(study=study, study_dir=tmp_path, base_raw=dict(tiny_classification_config))
    written = write_report(runner)
    assert any(p.endswith("pareto_front.png") for p in written["plots"])
    assert len(written["configs"]) == len(study.best_trials)
    assert "Pareto front" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("pruner", [
    {"type": "median", "n_startup_trials": 3},
    {"type": "asha", "min_resource": 2, "reduction_factor": 3},
    {"type": "successive_halving", "min_resource": 1, "reduction_factor": 2},
    {"type": "hyperband", "min_resource": 1, "max_resource": 9, "reduction_factor": 3},
])
def test_each_pruner_stops_bad_trials_and_never_the_best(pruner):
    """The pruner built from search.pruner, driven the way trial processes drive it (report every
    evaluation step, ask should_prune): clearly worse curves are cut, the best one runs to the end."""
    from tuneforge.config import SearchPruner
    from tuneforge.search.pruners import build_pruner

    study = optuna.create_study(direction="maximize", pruner=build_pruner(SearchPruner.model_validate(pruner)),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    quality = [0.5, 0.9, 0.2, 0.8, 0.1, 0.95, 0.3, 0.4, 0.05, 0.6, 0.15, 0.99]  # per trial
    steps_run = {}
    for q in quality:
        trial = study.ask()
        trial.suggest_float("training.lr", 1e-5, 1e-2, log=True)
        for step in range(1, 10):
            trial.report(q * step / 9, step)  # learning curves that keep their order
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, q)
        steps_run[q] = step
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert len(pruned) >= 3, f"{pruner['type']} pruned {len(pruned)} of {len(quality)}"
    assert steps_run[0.99] == 9 and study.best_value == 0.99
    assert min(steps_run[q] for q in (0.05, 0.1, 0.15)) < 9  # the worst curves are cut early
