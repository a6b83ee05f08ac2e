"""Meta-tests in the spirit of datasette's: every hook is documented and exercised by a test."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from tuneforge.docs import hookspec_functions
from tuneforge.plugin_manager import PluginManager

TESTS = Path(__file__).parent
SPECS = hookspec_functions()


def test_hookspecs_are_found():
    names = [name for name, _ in SPECS]
    assert set(names) == set(PluginManager.hook_names())
    assert {"tf_register_tasks", "tf_register_trackers", "tf_on_step_end", "tf_on_exception"} <= set(names)


@pytest.mark.parametrize("name,fn", SPECS, ids=[n for n, _ in SPECS])
def test_hookspec_has_a_docstring(name, fn):
    doc = inspect.getdoc(fn) or ""
    assert len(doc.split()) >= 8, f"hookspec {name} needs a docstring saying when it is called and with what"


@pytest.mark.parametrize("name", [n for n, _ in SPECS])
def test_hookspec_is_exercised_by_a_test(name):
    """Some test file other than this one names the hook (implements it or asserts it was called)."""
    this = Path(__file__).resolve()
    pattern = re.compile(rf"\b{re.escape(name)}\b")
    users = [p.relative_to(TESTS) for p in TESTS.rglob("*.py") if p.resolve() != this
             and pattern.search(p.read_text(encoding="utf-8"))]
    assert users, f"no test exercises hook {name}; add a test that implements it or checks it is called"
