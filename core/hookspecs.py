"""Every hook a tuneforge plugin can implement. The docstrings are the reference.

A plugin is a module or object with functions decorated by ``tuneforge.hookimpl``
whose names match the specs below. Plugins load from the ``tuneforge.plugins``
entry-point group (built-ins included), so a third-party package declares::

    [project.entry-points."tuneforge.plugins"]
    my_plugin = "my_package.plugin"

There are two layers:

* **Composition hooks** (``tf_register_*``) run once when a plugin manager is
  built. Each receives a ``register(name, obj)`` callback (:class:`Register`) and
  may register any number of things. Registering a name another plugin already
  registered is an error naming both plugins.
* **Observer hooks** (``tf_on_*``) are called around the training loop. They see
  the run but do not own it: return values are ignored. A plugin that must steer
  the run uses the run's control channel, :meth:`RunContext.request_stop
  <tuneforge.loop.RunContext.request_stop>` and :meth:`RunContext.set_hyperparameters
  <tuneforge.loop.RunContext.set_hyperparameters>`. An exception raised in any hook
  is re-raised as :class:`tuneforge.errors.PluginError` naming the plugin.

This module is the one place a hook is declared: :data:`COMPOSITION_HOOKS` (and so
the plugin manager's registries), :data:`OBSERVER_HOOKS` (and so the pytest
plugin's hook recorder) are filled by the decorators below.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    from tuneforge.adapters import Adapter
    from tuneforge.loop import FitResult, RunContext
    from tuneforge.meta.algorithm import MetaAlgorithm
    from tuneforge.search.strategy import SearchStrategy
    from tuneforge.tasks import Task
    from tuneforge.tracking import Tracker

PROJECT = "tuneforge"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

T_contra = TypeVar("T_contra", contravariant=True)
F = TypeVar("F", bound=Callable[..., Any])

#: A metric function: ``fn(predictions, references) -> float``, one item per example.
MetricFn = Callable[[Sequence[Any], Sequence[Any]], float]


class Register(Protocol[T_contra]):
    """The callback a composition hook receives: ``register(name, obj)`` adds ``obj``
    under ``name`` to the hook's registry, remembering which plugin registered it."""

    def __call__(self, name: str, obj: T_contra) -> None: ...


@dataclass(frozen=True)
class CompositionHook:
    """A ``tf_register_<registry>`` hook: it fills the plugin manager's ``registry``
    attribute with things called ``kind`` in error messages."""

    name: str
    registry: str
    kind: str


#: hook name -> what it fills, in declaration order.
COMPOSITION_HOOKS: dict[str, CompositionHook] = {}
#: names of the observer hooks, in declaration order.
OBSERVER_HOOKS: list[str] = []


def composition_hook(kind: str) -> Callable[[F], F]:
    """Declare the composition hookspec ``tf_register_<registry>`` filling a registry of ``kind``."""

    def declare(fn: F) -> F:
        registry = fn.__name__.removeprefix("tf_register_")
        COMPOSITION_HOOKS[fn.__name__] = CompositionHook(fn.__name__, registry, kind)
        return hookspec(fn)

    return declare


def observer_hook(fn: F) -> F:
    """Declare an observer hookspec (``tf_on_*``)."""
    OBSERVER_HOOKS.append(fn.__name__)
    return hookspec(fn)


# -- composition hooks -------------------------------------------------------------


@composition_hook("task")
def tf_register_tasks(register: Register[type[Task]]) -> None:
    """Register task classes: ``register("classification", ClassificationTask)``.

    A task is a subclass of :class:`tuneforge.tasks.Task`; its ``name`` in the
    config's ``task.name`` selects it, and its ``Options`` model validates the
    rest of the ``task:`` section.
    """


@composition_hook("metric")
def tf_register_metrics(register: Register[MetricFn]) -> None:
    """Register metric functions: ``register("matthews", fn)``.

    ``fn(predictions, references) -> float``, called with one item per example
    from the task's ``metric_inputs`` (label names, tag sequences, texts...).
    A run computes the ones named in ``evaluation.extra_metrics`` next to the
    task's own metrics, and may select on them (``evaluation.metric``), so a
    plugin adds a metric to every task without a new task.
    """


@composition_hook("adapter")
def tf_register_adapters(register: Register[type[Adapter]]) -> None:
    """Register parameter-efficient adapters: ``register("lora", LoraAdapter)``.

    An adapter is a subclass of :class:`tuneforge.adapters.Adapter`, selected by
    the config's ``adapter.type``.
    """


@composition_hook("search strategy")
def tf_register_search_strategies(register: Register[type[SearchStrategy]]) -> None:
    """Register hyperparameter search strategies: ``register("tpe", TpeStrategy)``.

    Selected by ``search.strategy``; see :mod:`tuneforge.search` for the interface.
    """


@composition_hook("tracker")
def tf_register_trackers(register: Register[type[Tracker]]) -> None:
    """Register experiment trackers: ``register("jsonl", JsonlTracker)``.

    A tracker is a subclass of :class:`tuneforge.tracking.Tracker`, selected by
    the config's ``trackers`` list. Trackers only run on the main process.
    """


@composition_hook("meta-learning algorithm")
def tf_register_meta_algorithms(register: Register[type[MetaAlgorithm]]) -> None:
    """Register meta-learning algorithms: ``register("reptile", Reptile)``.

    Selected by ``meta.algorithm``; see :mod:`tuneforge.meta` for the interface.
    """


# -- observer hooks ----------------------------------------------------------------
#
# They observe. The run's control channel is explicit: ``run.request_stop(reason, status=...)``
# ends training cleanly after the current step (its evaluation and checkpoint included), and
# ``run.set_hyperparameters(lr=..., weight_decay=..., eps=...)`` changes the optimizer's values
# while keeping the schedule's position. Both must be called on every rank alike.


@observer_hook
def tf_on_fit_start(run: RunContext) -> None:
    """Called once on every rank after model, data and optimizer are prepared,
    before the first step (also after a resume). ``run.set_hyperparameters(...)`` here
    makes a resumed run follow new values instead of the checkpoint's."""


@observer_hook
def tf_on_step_end(run: RunContext, step: int, metrics: dict[str, float]) -> None:
    """Called on every rank after each optimizer step with ``loss``, ``lr``,
    ``grad_norm`` (when clipping) and ``epoch``. Keep it cheap: it is on the hot path."""


@observer_hook
def tf_on_evaluate(run: RunContext, step: int, split: str, metrics: dict[str, float]) -> None:
    """Called on every rank after an evaluation of ``split`` with the gathered metrics.

    An undefined metric is ``nan`` here (written as ``null`` to JSON). To end the run on
    what it sees (pruning, a target reached), call ``run.request_stop(reason)``."""


@observer_hook
def tf_on_checkpoint(run: RunContext, step: int, path: Path) -> None:
    """Called on every rank after a checkpoint at ``path`` is complete (renamed into place)."""


@observer_hook
def tf_on_fit_end(run: RunContext, result: FitResult) -> None:
    """Called on every rank when training ends normally (also after early stopping or
    ``run.request_stop``); ``result.status`` says which."""


@observer_hook
def tf_on_exception(run: RunContext, exc: BaseException) -> None:
    """Called on every rank when training raises; the exception is re-raised afterwards."""
