"""Built-in hyperparameter search strategies.

Optuna samplers (random, grid, tpe, gp, cmaes, nsga2, sobol), a REINFORCE policy
controller, population-based training, and a portfolio from the study library. Each is a
:class:`tuneforge.search.SearchStrategy` registered under its name; a third-party
package registers its own exactly the same way (docs/search.md).

* :mod:`.samplers` the strategies that are an Optuna sampler
* :mod:`.reinforce` (and :mod:`.reinforce_sampler`) the REINFORCE controller
* :mod:`.pbt` population-based training, which drives the study runner itself
* :mod:`.portfolio` a greedy portfolio of recipes from the study library, then TPE
"""

from __future__ import annotations

from typing import Any

from tuneforge import hookimpl
from tuneforge.plugins.search_strategies.pbt import PbtOptions, PbtStrategy
from tuneforge.plugins.search_strategies.portfolio import PortfolioOptions, PortfolioStrategy
from tuneforge.plugins.search_strategies.reinforce import ReinforceOptions, ReinforceStrategy
from tuneforge.plugins.search_strategies.samplers import (
    CmaEsStrategy,
    GpStrategy,
    GridStrategy,
    Nsga2Strategy,
    NsgaOptions,
    QmcOptions,
    RandomStrategy,
    SobolStrategy,
    StartupOptions,
    TpeOptions,
    TpeStrategy,
)

__all__ = [
    "CmaEsStrategy", "GpStrategy", "GridStrategy", "Nsga2Strategy", "NsgaOptions", "PbtOptions", "PbtStrategy",
    "PortfolioOptions", "PortfolioStrategy", "QmcOptions", "RandomStrategy", "ReinforceOptions", "ReinforceStrategy",
    "SobolStrategy", "StartupOptions", "TpeOptions", "TpeStrategy",
]


@hookimpl
def tf_register_search_strategies(register: Any) -> None:
    for cls in (RandomStrategy, GridStrategy, TpeStrategy, GpStrategy, CmaEsStrategy, Nsga2Strategy,
                SobolStrategy, ReinforceStrategy, PbtStrategy, PortfolioStrategy):
        register(cls.name, cls)
    register("qmc", SobolStrategy)
