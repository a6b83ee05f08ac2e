"""The third-party strategy plugin shown in docs/search.md registers and runs a study."""

from __future__ import annotations

import re
import types
from pathlib import Path

import optuna

from tuneforge.config import SearchConfig
from tuneforge.plugin_manager import PluginManager
from tuneforge.search import Objective, SearchSpace

DOC = Path(__file__).resolve().parents[2] / "docs" / "search.md"


def load_doc_plugin() -> types.ModuleType:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    source = next(b for b in blocks if "tf_register_search_strategies" in b)
    assert 20 <= len(source.splitlines()) <= 60  # "a few dozen lines"
    module = types.ModuleType("my_package.local_search")
    exec(compile(source, str(DOC), "exec"), module.__dict__)
    return module


def test_doc_strategy_plugin_registers_and_improves_on_its_start():
    pm = PluginManager()
    pm.register(load_doc_plugin(), name="local_search")
    pm.build_registries()
    cls = pm.search_strategies.get("local")
    assert pm.search_strategies.entry("local").plugin == "local_search"
    space = SearchSpace.from_config(SearchConfig.model_validate({"params": {
        "training.lr": {"type": "float", "low": 0.0, "high": 1.0},
        "training.batch_size": {"type": "int", "low": 8, "high": 64},
    }}))
    strategy = cls(cls.parse_options({"n_startup_trials": 4, "scale": 0.05}, "local"), space,
                   [Objective("validation.accuracy", "maximize")], seed=0)
    strategy.check()
    study = optuna.create_study(direction="maximize", sampler=strategy.sampler())
    for _ in range(30):
        trial = study.ask()
        p = space.sample(trial, {})
        study.tell(trial, -((p["training.lr"] - 0.3) ** 2) - ((p["training.batch_size"] - 32) / 56) ** 2)
    assert study.best_value > max(t.value for t in study.trials[:4])
    assert abs(study.best_params["training.lr"] - 0.3) < 0.1
