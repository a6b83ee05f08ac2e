"""Every hook a tuneforge plugin can implement. The docstrings are the reference.

A plugin is a module or object with functions decorated by ``tuneforge.hookimpl``
whose names match the specs below. Plugins load from the ``tuneforge.plugins``
entry-point group (built-ins included), so a third-party package declares::

    [project.entry-points."tuneforge.plugins"]
    my_plugin = "my_package.plugin"

There are two layers:

* **Composition hooks** (``tf_register_*``) run once when a plugin manager is
  built. Each receives a ``register(name, obj)`` callback and may register any
  number of things. Registering a name another plugin already registered is an
  error naming both plugins.
* **Observer hooks** (``tf_on_*``) are called around the training loop. They see
  the run but do not own it: return values are ignored. An exception raised in
  any hook is re-raised as :class:`tuneforge.errors.PluginError` naming the plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    from tuneforge.loop import FitResult, RunContext

PROJECT = "tuneforge"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- composition hooks -------------------------------------------------------------


@hookspec
def tf_register_tasks(register: Any) -> None:
    """Register task classes: ``register("classification", ClassificationTask)``.

    A task is a subclass of :class:`tuneforge.tasks.Task`; its ``name`` in the
    config's ``task.name`` selects it, and its ``Options`` model validates the
    rest of the ``task:`` section.
    """


@hookspec
def tf_register_metrics(register: Any) -> None:
    """Register metric functions: ``register("matthews", fn)``.

    ``fn(predictions, references) -> float``, called with one item per example
    from the task's ``metric_inputs`` (label names, tag sequences, texts...).
    A run computes the ones named in ``evaluation.extra_metrics`` next to the
    task's own metrics, and may select on them (``evaluation.metric``), so a
    plugin adds a metric to every task without a new task.
    """


@hookspec
def tf_register_adapters(register: Any) -> None:
    """Register parameter-efficient adapters: ``register("lora", LoraAdapter)``.

    An adapter is a subclass of :class:`tuneforge.adapters.Adapter`, selected by
    the config's ``adapter.type``.
    """


@hookspec
def tf_register_search_strategies(register: Any) -> None:
    """Register hyperparameter search strategies: ``register("tpe", TpeStrategy)``.

    Selected by ``search.strategy``; see :mod:`tuneforge.search` for the interface.
    """


@hookspec
def tf_register_trackers(register: Any) -> None:
    """Register experiment trackers: ``register("jsonl", JsonlTracker)``.

    A tracker is a subclass of :class:`tuneforge.tracking.Tracker`, selected by
    the config's ``trackers`` list. Trackers only run on the main process.
    """


@hookspec
def tf_register_meta_algorithms(register: Any) -> None:
    """Register meta-learning algorithms: ``register("reptile", Reptile)``.

    Selected by ``meta.algorithm``; see :mod:`tuneforge.meta` for the interface.
    """


# -- observer hooks ----------------------------------------------------------------


@hookspec
def tf_on_fit_start(run: RunContext) -> None:
    """Called once on every rank after model, data and optimizer are prepared,
    before the first step (also after a resume)."""


@hookspec
def tf_on_step_end(run: RunContext, step: int, metrics: dict[str, float]) -> None:
    """Called on every rank after each optimizer step with ``loss``, ``lr``,
    ``grad_norm`` (when clipping) and ``epoch``. Keep it cheap: it is on the hot path."""


@hookspec
def tf_on_evaluate(run: RunContext, step: int, split: str, metrics: dict[str, float]) -> None:
    """Called on every rank after an evaluation of ``split`` with the gathered metrics."""


@hookspec
def tf_on_checkpoint(run: RunContext, step: int, path: Path) -> None:
    """Called on every rank after a checkpoint at ``path`` is complete (renamed into place)."""


@hookspec
def tf_on_fit_end(run: RunContext, result: FitResult) -> None:
    """Called on every rank when training ends normally (also after early stopping)."""


@hookspec
def tf_on_exception(run: RunContext, exc: BaseException) -> None:
    """Called on every rank when training raises; the exception is re-raised afterwards."""
