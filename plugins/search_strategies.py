"""Built-in hyperparameter search strategies.

Optuna samplers (random, grid, tpe, gp, cmaes, nsga2, sobol), a REINFORCE policy
controller, and population-based training. Each is a
:class:`tuneforge.search.SearchStrategy` registered under its name; a third-party
package registers its own exactly the same way (docs/search.md).
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

from pydantic import Field

from tuneforge import hookimpl
from tuneforge.errors import ConfigError
from tuneforge.search import SearchStrategy, StrategyOptions
from tuneforge.search.pbt import PbtOptions, check_pbt_space, run_pbt


class RandomStrategy(SearchStrategy):
    """Independent uniform (or log-uniform) sampling."""

    name = "random"

    def sampler(self) -> Any:
        import optuna

        return optuna.samplers.RandomSampler(seed=self.seed)


class GridStrategy(SearchStrategy):
    """Every combination of the parameters' values (categorical choices, or low..high by step)."""

    name = "grid"
    multi_objective = True

    def check(self) -> None:
        super().check()
        for p in self.space:
            if p.when:
                raise ConfigError(f"search.params.{p.key}: grid search cannot take conditional parameters "
                                  "(when:); use random, tpe or sobol")
            p.grid()  # raises a ConfigError naming the parameter if it has no finite grid

    def sampler(self) -> Any:
        import optuna

        class Grid(optuna.samplers.GridSampler):
            # GridSampler calls study.stop() when the grid is exhausted, which only works inside
            # study.optimize; the study runner asks is_exhausted() before every trial instead.
            def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
                return None

        return Grid({p.key: p.grid() for p in self.space}, seed=self.seed)


class TpeOptions(StrategyOptions):
    n_startup_trials: int = Field(5, ge=0, description="Random trials before the model is used.")
    multivariate: bool = Field(True, description="Model parameters jointly (grouped for conditional ones).")
    constant_liar: bool = Field(True, description="Avoid proposing what a running trial already evaluates.")


class TpeStrategy(SearchStrategy):
    """Tree-structured Parzen estimator (Bayesian optimisation; conditional spaces)."""

    name = "tpe"
    Options = TpeOptions
    options: TpeOptions

    def sampler(self) -> Any:
        import optuna

        o = self.options
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=self.seed, n_startup_trials=o.n_startup_trials, multivariate=o.multivariate,
                group=o.multivariate, constant_liar=o.constant_liar,
            )


class StartupOptions(StrategyOptions):
    n_startup_trials: int = Field(5, ge=1, description="Random (or quasi-random) trials before the model is used.")


class GpStrategy(SearchStrategy):
    """Gaussian-process Bayesian optimisation (expected improvement)."""

    name = "gp"
    Options = StartupOptions
    options: StartupOptions

    def sampler(self) -> Any:
        import optuna

        return optuna.samplers.GPSampler(seed=self.seed, n_startup_trials=self.options.n_startup_trials,
                                         deterministic_objective=False)


class CmaEsStrategy(SearchStrategy):
    """CMA-ES over the numeric parameters (categorical ones are sampled at random)."""

    name = "cmaes"
    Options = StartupOptions
    options: StartupOptions
    multi_objective = False

    def check(self) -> None:
        super().check()
        if not any(p.type != "categorical" for p in self.space):
            raise ConfigError("cmaes needs at least one float/int parameter; use tpe for categorical-only spaces")
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise ConfigError("search strategy 'cmaes' needs the cmaes package: pip install cmaes") from None

    def sampler(self) -> Any:
        import optuna

        return optuna.samplers.CmaEsSampler(seed=self.seed, n_startup_trials=self.options.n_startup_trials,
                                            warn_independent_sampling=False)


class NsgaOptions(StrategyOptions):
    population_size: int = Field(8, ge=2, description="Individuals per generation.")
    mutation_prob: float | None = Field(None, ge=0, le=1, description="Default: 1 / number of parameters.")
    crossover_prob: float = Field(0.9, ge=0, le=1)


class Nsga2Strategy(SearchStrategy):
    """NSGA-II genetic algorithm (multi-objective: returns a Pareto front)."""

    name = "nsga2"
    Options = NsgaOptions
    options: NsgaOptions

    def sampler(self) -> Any:
        import optuna

        o = self.options
        return optuna.samplers.NSGAIISampler(population_size=o.population_size, mutation_prob=o.mutation_prob,
                                             crossover_prob=o.crossover_prob, seed=self.seed)


class QmcOptions(StrategyOptions):
    qmc_type: Literal["sobol", "halton"] = Field("sobol", description="Low-discrepancy sequence.")
    scramble: bool = Field(True, description="Randomised (seeded) scrambling of the sequence.")


class SobolStrategy(SearchStrategy):
    """Quasi-random low-discrepancy sampling (Sobol by default): even coverage of the space."""

    name = "sobol"
    Options = QmcOptions
    options: QmcOptions

    def sampler(self) -> Any:
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(qmc_type=self.options.qmc_type, scramble=self.options.scramble,
                                              seed=self.seed, warn_independent_sampling=False)


# -- REINFORCE ------------------------------------------------------------------------------


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
        from tuneforge.search.reinforce import ReinforceSampler

        return ReinforceSampler(self.options, self.seed, self.objectives[0].direction)


# -- PBT ------------------------------------------------------------------------------------


class PbtStrategy(SearchStrategy):
    """Population-based training: exploit/explore from checkpoints of better members."""

    name = "pbt"
    multi_objective = False
    supports_pruning = False

    Options = PbtOptions
    options: PbtOptions

    def check(self) -> None:
        super().check()
        check_pbt_space(self.space.params)

    def run(self, runner: Any) -> None:
        run_pbt(runner, self.options)


@hookimpl
def tf_register_search_strategies(register: Any) -> None:
    for cls in (RandomStrategy, GridStrategy, TpeStrategy, GpStrategy, CmaEsStrategy, Nsga2Strategy,
                SobolStrategy, ReinforceStrategy, PbtStrategy):
        register(cls.name, cls)
    register("qmc", SobolStrategy)
