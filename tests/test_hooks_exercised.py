"""Every hook does what its spec says: composition hooks fill their registry, observer hooks
see evaluations and exceptions of a real tiny run."""

from __future__ import annotations

from typing import Any

import pytest

from tuneforge import hookimpl
from tuneforge.errors import PluginError
from tuneforge.plugin_manager import COMPOSITION_HOOKS, PluginManager


class RegistersOneOfEach:
    """Implements every composition hook, registering a marker object under 'probe'."""

    marker = object()

    @hookimpl
    def tf_register_tasks(self, register: Any) -> None:
        register("probe", self.marker)

    @hookimpl
    def tf_register_metrics(self, register: Any) -> None:
        register("probe", self.marker)

    @hookimpl
    def tf_register_adapters(self, register: Any) -> None:
        register("probe", self.marker)

    @hookimpl
    def tf_register_search_strategies(self, register: Any) -> None:
        register("probe", self.marker)

    @hookimpl
    def tf_register_trackers(self, register: Any) -> None:
        register("probe", self.marker)

    @hookimpl
    def tf_register_meta_algorithms(self, register: Any) -> None:
        register("probe", self.marker)


def test_each_composition_hook_fills_its_registry():
    pm = PluginManager()
    pm.register(RegistersOneOfEach(), name="probe-plugin")
    pm.build_registries()
    for hook, attr in COMPOSITION_HOOKS.items():
        entry = getattr(pm, attr).entry("probe")
        assert entry.obj is RegistersOneOfEach.marker and entry.plugin == "probe-plugin", hook


def test_builtin_metrics_are_registered_and_compute():
    pm = PluginManager.default().build_registries()
    accuracy = pm.metrics.get("accuracy")
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 1]) == pytest.approx(0.75)
    assert pm.metrics.entry("accuracy").plugin == "classification"


def test_tf_on_evaluate_sees_validation_and_test(tf_run, tiny_classification_config, tf_hook_recorder):
    results, _ = tf_run(tiny_classification_config, plugins=[tf_hook_recorder],
                        overrides=["training.max_steps=10", "evaluation.every_n_steps=5"])
    evaluations = [kw for name, kw in tf_hook_recorder.calls if name == "tf_on_evaluate"]
    assert [(e["split"], e["step"]) for e in evaluations] == [("validation", 5), ("validation", 10), ("test", 10)]
    assert evaluations[-1]["metrics"]["accuracy"] == pytest.approx(results["test"]["accuracy"])
    assert "tf_on_exception" not in tf_hook_recorder.names()


class FailsAtStep3:
    @hookimpl
    def tf_on_step_end(self, run: Any, step: int, metrics: dict[str, float]) -> None:
        if step == 3:
            raise RuntimeError("probe failure")


def test_tf_on_exception_sees_a_failing_plugin(tf_run, tiny_classification_config, tf_hook_recorder):
    with pytest.raises(PluginError, match=r"plugin '.*' raised RuntimeError in tf_on_step_end: probe failure"):
        tf_run(tiny_classification_config, plugins=[tf_hook_recorder, FailsAtStep3()],
               overrides=["training.max_steps=10"])
    names = tf_hook_recorder.names()
    assert names[-1] == "tf_on_exception" and "tf_on_fit_end" not in names
    (exc,) = [kw["exc"] for name, kw in tf_hook_recorder.calls if name == "tf_on_exception"]
    assert isinstance(exc, PluginError)
    steps = [kw["step"] for name, kw in tf_hook_recorder.calls if name == "tf_on_step_end"]
    assert steps == [1, 2]  # pluggy calls the later-registered FailsAtStep3 first at step 3
