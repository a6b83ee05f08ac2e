"""The plugin manager: entry points, registries, env vars, blame; the pytest plugin's fixture docs."""

import ast
import types
from pathlib import Path

import pytest
import torch

from tuneforge import hookimpl
from tuneforge.errors import PluginError
from tuneforge.hookspecs import hookspec  # noqa: F401 - the spec module must import cleanly
from tuneforge.plugin_manager import COMPOSITION_HOOKS, PluginManager
from tuneforge.plugins.classification import ClassificationTask


def plugin_module(name: str, **hooks) -> types.ModuleType:
    mod = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(mod, hook_name, hookimpl(fn))
    return mod


def test_builtins_load_through_the_entry_point_group(tf_plugin_manager):
    names = {p.name for p in tf_plugin_manager.plugins}
    assert {"classification", "trackers"} <= names
    info = next(p for p in tf_plugin_manager.plugins if p.name == "classification")
    assert info.distribution == "tuneforge" and info.version
    assert "tf_register_tasks" in info.hooks
    tf_plugin_manager.build_registries()
    assert "classification" in tf_plugin_manager.tasks
    assert tf_plugin_manager.tasks.entry("classification").plugin == "classification"


def test_duplicate_registration_names_both_plugins(tf_plugin_manager, tf_register):
    class Other:
        pass

    tf_register(plugin_module("my_pkg.plugin", tf_register_tasks=lambda register: register("classification", Other)))
    with pytest.raises(PluginError) as err:
        tf_plugin_manager.build_registries()
    msg = str(err.value)
    assert "'classification' is registered twice" in msg
    assert "plugin 'classification'" in msg and "plugin 'my_pkg.plugin'" in msg


def test_unknown_name_suggests(tf_plugin_manager):
    tf_plugin_manager.build_registries()
    with pytest.raises(PluginError, match=r"unknown task 'clasification' \(did you mean 'classification'\?\)"):
        tf_plugin_manager.tasks.get("clasification")


def test_exception_in_a_hook_names_the_plugin(tf_plugin_manager, tf_register):
    def boom(run):
        raise RuntimeError("disk on fire")

    tf_register(plugin_module("flaky", tf_on_fit_start=boom))
    with pytest.raises(PluginError, match=r"plugin 'flaky' raised RuntimeError in tf_on_fit_start: disk on fire"):
        tf_plugin_manager.call("tf_on_fit_start", run=None)


def test_registration_hook_error_names_the_plugin(tf_plugin_manager, tf_register):
    tf_register(plugin_module("broken", tf_register_trackers=lambda register: 1 / 0))
    with pytest.raises(PluginError, match="plugin 'broken' raised ZeroDivisionError in tf_register_trackers"):
        tf_plugin_manager.build_registries()


def test_invalid_hookimpl_is_refused(tf_plugin_manager):
    with pytest.raises(PluginError, match="plugin 'bad' is invalid"):
        tf_plugin_manager.register(plugin_module("bad", tf_on_fit_start=lambda run, extra_arg: None), name="bad")


def test_env_vars_select_and_disable(monkeypatch):
    monkeypatch.setenv("TUNEFORGE_LOAD_PLUGINS", "trackers")
    assert [p.name for p in PluginManager.default().plugins] == ["trackers"]
    monkeypatch.delenv("TUNEFORGE_LOAD_PLUGINS")
    monkeypatch.setenv("TUNEFORGE_DISABLE_PLUGINS", "classification")
    pm = PluginManager.default().build_registries()
    assert "classification" not in {p.name for p in pm.plugins}
    with pytest.raises(PluginError, match="unknown task 'classification'"):
        pm.tasks.get("classification")
    monkeypatch.delenv("TUNEFORGE_DISABLE_PLUGINS")
    monkeypatch.setenv("TUNEFORGE_LOAD_PLUGINS", "trackrs")
    with pytest.raises(PluginError, match="did you mean 'trackers'"):
        PluginManager.default()


def test_observer_hooks_called_in_order_for_every_plugin(tf_plugin_manager, tf_register):
    seen = []
    tf_register(plugin_module("a", tf_on_step_end=lambda run, step, metrics: seen.append(("a", step))))
    tf_register(plugin_module("b", tf_on_step_end=lambda run, step, metrics: seen.append(("b", step))))
    tf_plugin_manager.call("tf_on_step_end", run=None, step=3, metrics={})
    assert seen == [("b", 3), ("a", 3)]  # pluggy's order: the last registered is called first
    with pytest.raises(PluginError, match="unknown hook"):
        tf_plugin_manager.call("tf_on_stepend", run=None)


def test_trace_logs_which_plugin_answered(monkeypatch, caplog, tf_register, tf_plugin_manager):
    monkeypatch.setenv("TUNEFORGE_TRACE_HOOKS", "1")
    pm = PluginManager()
    pm.register(plugin_module("traced", tf_on_fit_end=lambda run, result: None))
    with caplog.at_level("INFO", logger="tuneforge.plugin_manager"):
        pm.call("tf_on_fit_end", run=None, result=None)
    assert "hook tf_on_fit_end -> plugin traced" in caplog.text


def test_every_composition_hook_has_a_registry():
    pm = PluginManager()
    for hook_name, attr in COMPOSITION_HOOKS.items():
        assert hook_name in PluginManager.hook_names()
        assert getattr(pm, attr).kind


class _ExplodingTask(ClassificationTask):
    name = "exploding"

    def training_loss(self, model, batch):
        raise RuntimeError("loss went sideways")


class _ExplodingPlugin:
    @hookimpl
    def tf_register_tasks(self, register):
        register("exploding", _ExplodingTask)


def test_exception_in_a_plugins_task_code_names_the_plugin(tiny_classification_config, tf_run, capsys, monkeypatch):
    """Outside hooks too: an error in a task method comes out as a PluginError with the plugin and place."""
    cfg = {**tiny_classification_config, "task": {"name": "exploding"}}
    with pytest.raises(PluginError) as err:
        tf_run(cfg, plugins=[_ExplodingPlugin()])
    msg = str(err.value)
    assert "plugin '_ExplodingPlugin' raised RuntimeError in training_loss (test_plugins.py:" in msg
    assert "loss went sideways" in msg and "TUNEFORGE_TRACEBACK=1" in msg
    assert isinstance(err.value.__cause__, RuntimeError)


def test_blame_ignores_errors_outside_plugin_code(tf_plugin_manager):
    tf_plugin_manager.build_registries()
    try:
        torch.zeros(2) @ torch.zeros(3)
    except RuntimeError as exc:
        assert tf_plugin_manager.blame(exc) is None
    with pytest.raises(ZeroDivisionError), tf_plugin_manager.blaming():
        _ = 1 / 0


# -- registration is idempotent, its errors are one line ----------------------------------------


def test_registering_an_already_registered_plugin_is_a_no_op(tf_plugin_manager):
    """The documented ``tf_run(..., plugins=[my_package.plugin])`` after ``pip install -e``: the
    entry point already loaded the module."""
    import tuneforge.plugins.classification as module

    before = [p.name for p in tf_plugin_manager.plugins]
    assert tf_plugin_manager.register(module) == "classification"
    assert tf_plugin_manager.register(module, name="something-else") == "classification"
    tf_plugin_manager.load_module("tuneforge.plugins.classification")  # the config's plugins: list
    assert [p.name for p in tf_plugin_manager.plugins] == before
    tf_plugin_manager.build_registries()  # registered once: no duplicate task
    assert tf_plugin_manager.register(module) == "classification"  # also after the registries are built


def test_registration_errors_are_one_plugin_error_line(tf_plugin_manager):
    taken = plugin_module("classification", tf_on_fit_end=lambda run, result: None)
    with pytest.raises(PluginError, match="a plugin named 'classification' is already registered") as err:
        tf_plugin_manager.register(taken)
    assert "\n" not in str(err.value)
    with pytest.raises(PluginError, match="plugin 'bad' is invalid") as err:
        tf_plugin_manager.register(plugin_module("bad", tf_on_fit_start=lambda run, extra_arg: None))
    assert "\n" not in str(err.value)
    tf_plugin_manager.build_registries()
    with pytest.raises(PluginError, match="plugin 'late' is registered after the registries were built") as err:
        tf_plugin_manager.register(plugin_module("late", tf_on_fit_end=lambda run, result: None))
    assert "\n" not in str(err.value)


# -- hooks are called through pluggy --------------------------------------------------------------


def test_hook_wrappers_apply_and_blame_stays_with_the_raising_plugin(tf_plugin_manager, tf_register):
    seen = []

    def wrap(run, step, metrics):
        seen.append("wrapper before")
        try:
            yield
        finally:
            seen.append("wrapper after")

    def first(run, step, metrics):
        seen.append("tryfirst")

    def fails(run, step, metrics):
        raise ValueError("bad step")

    tf_register(plugin_module("fails", tf_on_step_end=fails))
    for name, impl in (("wrapper", hookimpl(wrapper=True)(wrap)), ("early", hookimpl(tryfirst=True)(first))):
        module = types.ModuleType(name)
        module.tf_on_step_end = impl
        tf_register(module)
    with pytest.raises(PluginError, match=r"^plugin 'fails' raised ValueError in tf_on_step_end: bad step$"):
        tf_plugin_manager.call("tf_on_step_end", run=None, step=1, metrics={})
    assert seen == ["wrapper before", "tryfirst", "wrapper after"]


# -- the fixture table of docs/writing-plugins.md ----------------------------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs" / "writing-plugins.md"
TABLE_BEGIN = "<!-- BEGIN FIXTURE TABLE (tests/test_plugins.py generates it from the fixtures' docstrings) -->"
TABLE_END = "<!-- END FIXTURE TABLE -->"


def fixture_table() -> str:
    """Markdown table of the pytest plugin's fixtures: name, scope, first paragraph of the docstring."""
    import tuneforge.testing.pytest_plugin as plugin

    rows = ["| fixture | scope | what |", "|---|---|---|"]
    for node in ast.parse(Path(plugin.__file__).read_text(encoding="utf-8")).body:
        fixture = next((d for d in getattr(node, "decorator_list", []) if "pytest.fixture" in ast.unparse(d)), None)
        if not isinstance(node, ast.FunctionDef) or fixture is None:
            continue
        doc = ast.get_docstring(node) or ""
        assert doc, f"fixture {node.name} needs a docstring: it is the reference plugin authors read"
        scope = next((kw.value.value for kw in getattr(fixture, "keywords", []) if kw.arg == "scope"), "function")
        what = " ".join(doc.split("\n\n")[0].split()).replace("``", "`")
        rows.append(f"| `{node.name}` | {scope} | {what} |")
    return "\n".join(rows)


def test_fixture_table_in_the_docs_is_generated_from_the_fixtures():
    text = DOCS.read_text(encoding="utf-8")
    start, end = text.index(TABLE_BEGIN) + len(TABLE_BEGIN), text.index(TABLE_END)
    expected = fixture_table()
    assert text[start:end].strip() == expected, f"replace the fixture table of {DOCS.name} with:\n{expected}"
