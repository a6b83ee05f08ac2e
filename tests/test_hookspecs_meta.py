"""Meta-tests in the spirit of datasette's: every hook is documented and really fires in a test."""

from __future__ import annotations

import inspect
import types
from typing import Any

import pytest

from tuneforge import hookimpl, hookspecs
from tuneforge.config import validate
from tuneforge.docs import hookspec_functions
from tuneforge.errors import PluginError
from tuneforge.plugin_manager import PluginManager
from tuneforge.run import train
from tuneforge.testing.pytest_plugin import HookRecorder

SPECS = hookspec_functions()


def test_hookspecs_are_found():
    names = [name for name, _ in SPECS]
    assert set(names) == set(PluginManager.hook_names())
    assert {"tf_register_tasks", "tf_register_trackers", "tf_on_step_end", "tf_on_exception"} <= set(names)


@pytest.mark.parametrize("name,fn", SPECS, ids=[n for n, _ in SPECS])
def test_hookspec_has_a_docstring(name, fn):
    doc = inspect.getdoc(fn) or ""
    assert len(doc.split()) >= 8, f"hookspec {name} needs a docstring saying when it is called and with what"


class FailsAtFitEnd:
    @hookimpl
    def tf_on_fit_end(self, run: Any, result: Any) -> None:
        raise RuntimeError("end of the probe run")


@pytest.fixture(scope="module")
def fired(tiny_bert: str, tiny_classification_data: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Names of the hooks that fired: composition hooks while a plugin manager with a probe for
    each is built, observer hooks (recorded by the pytest plugin's HookRecorder) in a real tiny
    run that fails at its end, so tf_on_exception fires too."""
    names = set()
    for hook in hookspecs.COMPOSITION_HOOKS.values():
        marker = object()
        pm = PluginManager()
        probe = types.ModuleType(f"probe_{hook.registry}")
        setattr(probe, hook.name, hookimpl(lambda register, marker=marker: register("probe", marker)))
        pm.register(probe)
        pm.build_registries()
        if pm.registries[hook.registry].get("probe") is marker:
            names.add(hook.name)
    recorder = HookRecorder()
    pm = PluginManager.default()
    pm.register(FailsAtFitEnd(), name="fails-at-fit-end")
    pm.register(recorder, name="recorder")  # registered last: called first, so it sees tf_on_fit_end
    config = validate({
        "model": {"name_or_path": tiny_bert}, "task": {"name": "classification"},
        "data": {**tiny_classification_data, "max_length": 32},
        "training": {"max_steps": 2, "batch_size": 16, "seed": 0},
        "evaluation": {"strategy": "steps", "every_n_steps": 2},
        "output": {"dir": str(tmp_path_factory.mktemp("meta-run") / "run"), "export": False},
    })
    with pytest.raises(PluginError, match="end of the probe run"):
        train(config, pm)
    return names | set(recorder.names())


@pytest.mark.parametrize("name", [n for n, _ in SPECS])
def test_hookspec_is_exercised_by_a_test(name, fired):
    """The hook really fires: composition hooks fill their registry, observer hooks are called
    by the loop of a real run."""
    assert name in fired, f"hook {name} never fired; make the run (or build_registries) call it"
