"""The search-strategy interface that strategy plugins implement.

A strategy is registered by a plugin::

    @hookimpl
    def tf_register_search_strategies(register):
        register("my-strategy", MyStrategy)

and selected with ``search.strategy: my-strategy``; ``search.options`` is
validated by its ``Options`` model. Most strategies only propose parameters:
they implement :meth:`SearchStrategy.sampler` and return an Optuna sampler, and
the study runner does everything else (parallel workers, pruning, storage,
resume). A strategy that must control *when* and *from where* trials run (PBT
continues trials from other trials' checkpoints) overrides :meth:`SearchStrategy.run`
and drives the :class:`tuneforge.search.runner.StudyRunner` itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from tuneforge.errors import ConfigError

if TYPE_CHECKING:
    import optuna

    from tuneforge.search.objective import Objective
    from tuneforge.search.runner import StudyRunner
    from tuneforge.search.space import SearchSpace


class StrategyOptions(BaseModel):
    """Base of a strategy's ``search.options`` model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class SearchStrategy:
    """Proposes trial parameters for a study. Subclass and register it."""

    #: Registry name (informational; the registered name selects it).
    name: ClassVar[str] = ""
    #: Validates ``search.options``.
    Options: ClassVar[type[StrategyOptions]] = StrategyOptions
    #: Whether it can optimise several objectives (returns a Pareto front).
    multi_objective: ClassVar[bool] = True
    #: Whether trials of this strategy may be pruned by ``search.pruner``.
    supports_pruning: ClassVar[bool] = True

    def __init__(self, options: Any, space: SearchSpace, objectives: list[Objective], seed: int) -> None:
        self.options = options
        self.space = space
        self.objectives = objectives
        self.seed = seed

    @classmethod
    def parse_options(cls, raw: dict[str, Any], strategy_name: str) -> Any:
        try:
            return cls.Options.model_validate(raw)
        except ValidationError as exc:
            from tuneforge.config import format_validation_error

            raise ConfigError(format_validation_error(exc, cls.Options, "config", prefix="search.options.")) from None

    def check(self) -> None:
        """Raise :class:`ConfigError` if this strategy cannot search this space/objective set."""
        if len(self.objectives) > 1 and not self.multi_objective:
            raise ConfigError(
                f"search strategy '{self.name}' optimises one objective; with several objectives use "
                "nsga2, tpe, random, sobol or gp"
            )

    def sampler(self) -> optuna.samplers.BaseSampler:
        """The Optuna sampler that proposes parameters (called once per controller)."""
        raise NotImplementedError(f"search strategy '{self.name}' must implement sampler() or run()")

    def run(self, runner: StudyRunner) -> None:
        """Run the study. Default: ask/tell with :meth:`sampler` on ``runner``'s workers."""
        runner.optimize()
