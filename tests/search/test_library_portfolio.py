"""The portfolio strategy: greedy selection, relative recipes, and the order of its trials."""

from __future__ import annotations

import math
from types import SimpleNamespace

import optuna
import pytest

from tuneforge.config import SearchConfig, SearchPruner
from tuneforge.errors import ConfigError
from tuneforge.plugins.search_strategies.portfolio import (
    PortfolioOptions,
    PortfolioStrategy,
    build_portfolio,
    greedy_portfolio,
    normalised_scores,
    to_absolute,
    to_relative,
)
from tuneforge.search import Objective, SearchSpace
from tuneforge.search.library import DirectoryLibrary, LibraryEntry, new_id

SPACE = SearchSpace.from_config(SearchConfig.model_validate({"params": {
    "training.lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    "training.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.3},
}}))
LRS = (1e-4, 1e-3, 1e-2)
# Three earlier tasks, each run at the same three learning rates (batch 32, 100 steps).
SCORES = {"a": (0.9, 0.5, 0.1), "b": (0.2, 0.6, 0.7), "c": (0.5, 0.9, 0.1)}


def entry(name: str, scores: tuple[float, ...], batch: int = 32) -> LibraryEntry:
    trials = [{"number": i, "state": "COMPLETE", "params": {"training.lr": lr}, "value": v, "curve": []}
              for i, (lr, v) in enumerate(zip(LRS, scores))]
    trials.append({"number": 3, "state": "PRUNED", "params": {"training.lr": 0.05}, "value": None, "curve": []})
    best = max(trials[:3], key=lambda t: t["value"])
    return LibraryEntry(id=name, kind="study", source=name, meta={"task": "classification"},
                        metric="validation.accuracy", direction="maximize",
                        base={"training.batch_size": batch, "training.max_steps": 100}, trials=trials,
                        best={"params": best["params"], "value": best["value"]})


def test_normalised_scores_per_task_and_direction():
    assert normalised_scores([0.9, 0.5, 0.1], "maximize") == pytest.approx([1.0, 0.5, 0.0])
    assert normalised_scores([2.0, 1.0, 4.0], "minimize") == pytest.approx([2 / 3, 1.0, 0.0])
    assert normalised_scores([0.3, 0.3], "maximize") == [1.0, 1.0]


def test_greedy_portfolio_maximises_the_summed_best_score():
    # rows: lr 1e-4, 1e-3, 1e-2 ; columns: tasks a, b, c (normalised by hand from SCORES)
    matrix = [[1.0, 0.0, 0.5], [0.5, 0.8, 1.0], [0.0, 1.0, 0.0]]
    # 1e-3 covers 2.3; adding 1e-4 makes [1, .8, 1] = 2.8 (+0.5) vs 1e-2 [.5, 1, 1] = 2.5 (+0.2);
    # then 1e-2 adds 0.2 (task b 0.8 -> 1)
    assert greedy_portfolio(matrix, 3) == [1, 0, 2]
    assert greedy_portfolio(matrix, 2) == [1, 0]
    # covered already: the portfolio still fills to its size (Auto-sklearn 2.0), with the candidate
    # that scores best on all tasks by itself next (a hedge), not the earliest one
    assert greedy_portfolio([[1.0, 1.0], [0.2, 0.1], [0.3, 0.4]], 2) == [0, 2]
    assert greedy_portfolio([[1.0, 1.0], [0.5, 0.5]], 3) == [0, 1]  # no more candidates than there are


def test_build_portfolio_from_a_hand_made_library_picks_the_hand_computed_recipes():
    entries = [entry(n, s) for n, s in SCORES.items()]
    target = {"training.batch_size": 32, "training.max_steps": 100}
    recipes = build_portfolio(entries, SPACE, target, PortfolioOptions(size=3, lr_scaling="linear"))
    assert [p["training.lr"] for p, _ in recipes] == pytest.approx([1e-3, 1e-4, 1e-2])
    assert [o["portfolio_rank"] for _, o in recipes] == [0, 1, 2]
    assert recipes[0][1]["portfolio_mean_score"] == pytest.approx(2.3 / 3, abs=1e-3)
    # the three entries ran the same three recipes: each is one candidate, so a larger portfolio
    # holds them once each
    wide = build_portfolio(entries, SPACE, target, PortfolioOptions(size=5, lr_scaling="linear"))
    assert sorted(p["training.lr"] for p, _ in wide) == pytest.approx([1e-4, 1e-3, 1e-2])


def test_a_trial_that_failed_on_its_own_task_is_no_candidate():
    # task a: lr 1e-4 scored 0.9, 1e-3 0.5, 1e-2 0.1; the third of its top 3 is its worst trial
    target = {"training.batch_size": 32, "training.max_steps": 100}
    kept = build_portfolio([entry("a", SCORES["a"])], SPACE, target, PortfolioOptions(size=3))
    assert [p["training.lr"] for p, _ in kept] == pytest.approx([1e-4, 1e-3])  # own scores 1.0 and 0.5
    every = build_portfolio([entry("a", SCORES["a"])], SPACE, target, PortfolioOptions(size=3, min_own_score=0.0))
    assert [p["training.lr"] for p, _ in every] == pytest.approx([1e-4, 1e-3, 1e-2])


@pytest.mark.parametrize(("rule", "factor"), [("linear", 0.5), ("sqrt", math.sqrt(0.5)), ("none", 1.0)])
def test_lr_is_scaled_to_the_new_batch_size(rule, factor):
    source = {"training.batch_size": 32, "training.max_steps": 200}
    rel = to_relative({"training.lr": 1e-3, "training.warmup_steps": 20}, source, rule)
    assert rel["training.warmup_steps"] == pytest.approx(0.1)
    out = to_absolute(rel, {"training.batch_size": 16, "training.max_steps": 50}, rule)
    assert out["training.lr"] == pytest.approx(1e-3 * factor)
    assert out["training.warmup_steps"] == 5  # the same fraction of the new run's steps
    # a searched batch size travels with the recipe: the lr is unchanged
    searched = to_relative({"training.lr": 1e-3, "training.batch_size": 8}, source, rule)
    assert to_absolute(searched, {"training.batch_size": 64}, rule)["training.lr"] == pytest.approx(1e-3)
    # a run sized by epochs gives no step fractions
    assert "training.warmup_steps" not in to_relative({"training.warmup_steps": 20}, {"training.batch_size": 8}, rule)


def test_portfolio_library_recipes_are_scaled_in_the_portfolio():
    entries = [entry("a", SCORES["a"], batch=64)]
    recipes = build_portfolio(entries, SPACE, {"training.batch_size": 16}, PortfolioOptions(size=1))
    assert recipes[0][0]["training.lr"] == pytest.approx(1e-4 * math.sqrt(16 / 64))


class FakeRunner:
    """What the portfolio strategy uses of a StudyRunner; optimize() runs an in-memory study
    with a cheap objective instead of trial processes."""

    def __init__(self, library, n_trials):
        self.library, self.n_trials = library, n_trials
        self.storage_url, self.study_name = "sqlite:///here.db", "new"
        self.config = SimpleNamespace(task=SimpleNamespace(name="classification"),
                                      model_dump=lambda mode: {"training": {"batch_size": 32, "max_steps": 100}})
        self.search = SimpleNamespace(pruner=SearchPruner())
        self.objectives = [Objective("validation.accuracy", "maximize")]
        self.messages = []
        self.echo = self.messages.append

    def optimize(self, first=()):
        self.study = optuna.create_study(direction="maximize", sampler=self.strategy.sampler())
        for params, attrs in first:
            self.study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=True)
        for _ in range(self.n_trials):
            trial = self.study.ask()
            params = SPACE.sample(trial, {})
            self.study.tell(trial, -abs(math.log10(params["training.lr"]) + 3))


def test_the_strategy_enqueues_its_recipes_first_then_tpe(tmp_path):
    lib = DirectoryLibrary(tmp_path / "lib")
    for n, s in SCORES.items():
        lib.add(entry(n + "-" + new_id("x"), s))
    strategy = PortfolioStrategy(PortfolioOptions(size=2), SPACE, [Objective("validation.accuracy", "maximize")], 0)
    runner = FakeRunner(lib, n_trials=5)
    runner.strategy = strategy
    strategy.run(runner)  # type: ignore[arg-type]
    trials = runner.study.trials
    assert [t.params["training.lr"] for t in trials[:2]] == pytest.approx([1e-3, 1e-4])
    assert [t.user_attrs["portfolio_rank"] for t in trials[:2]] == [0, 1]
    assert all("fixed_params" in t.system_attrs for t in trials[:2])
    assert not any("fixed_params" in t.system_attrs for t in trials[2:])  # proposed by TPE
    assert isinstance(runner.study.sampler, optuna.samplers.TPESampler)
    assert runner.study.sampler._n_startup_trials == 2  # the portfolio is TPE's start-up
    assert runner.search.pruner.type == "successive_halving"
    assert any("portfolio recipe 0" in m for m in runner.messages)


def test_the_strategy_without_a_library_is_a_config_error():
    strategy = PortfolioStrategy(PortfolioOptions(), SPACE, [Objective("validation.accuracy", "maximize")], 0)
    runner = FakeRunner(None, 1)
    with pytest.raises(ConfigError, match=r"search\.library"):
        strategy.run(runner)  # type: ignore[arg-type]


def test_portfolio_is_the_default_when_the_library_has_entries(search_config, tmp_path, monkeypatch):
    from tuneforge.search.runner import StudyRunner

    space = {"params": {"training.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}, "n_trials": 2}
    messages: list[str] = []
    monkeypatch.setenv("TUNEFORGE_LIBRARY", str(tmp_path / "lib"))
    assert StudyRunner(search_config(space), echo=messages.append).search.strategy == "tpe"  # empty library
    DirectoryLibrary(tmp_path / "lib").add(entry("a", SCORES["a"]))
    runner = StudyRunner(search_config(space), echo=messages.append)
    assert runner.search.strategy == "portfolio" and isinstance(runner.strategy, PortfolioStrategy)
    assert any("using the portfolio strategy" in m for m in messages)
    explicit = StudyRunner(search_config({**space, "strategy": "random"}, name="r.yaml"), echo=messages.append)
    assert explicit.search.strategy == "random"
