"""The ``reinforce`` strategy: a REINFORCE policy controller over the search space.

The policy and its updates are described in :mod:`.reinforce_sampler`, which imports
Optuna and is loaded only when a study uses this strategy.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from tuneforge.search import SearchStrategy, StrategyOptions


class ReinforceOptions(StrategyOptions):
    learning_rate: float = Field(0.3, gt=0, description="Policy-gradient step size (advantages are normalised).")
    baseline_decay: float = Field(0.8, ge=0, lt=1, description="Moving-average reward baseline decay.")
    init_std: float = Field(0.3, gt=0, le=1, description="Initial std of numeric parameters (on a [0, 1] scale).")
    min_std: float = Field(0.05, gt=0, le=1, description="Floor of that std, so the policy keeps exploring.")


class ReinforceStrategy(SearchStrategy):
    """A reinforcement-learning controller: a REINFORCE policy over the space."""

    name = "reinforce"
    Options = ReinforceOptions
    options: ReinforceOptions
    multi_objective = False

    def sampler(self) -> Any:
        from tuneforge.plugins.search_strategies.reinforce_sampler import ReinforceSampler

        return ReinforceSampler(self.options, self.seed, self.objectives[0].direction)
