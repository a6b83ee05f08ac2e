"""The strategies that are an Optuna sampler: random, grid, tpe, gp, cmaes, nsga2, sobol."""

from __future__ import annotations

import warnings
from typing import Any, Literal

from pydantic import Field

from tuneforge.errors import ConfigError
from tuneforge.search import SearchStrategy, StrategyOptions


def optuna_sampler(name: str, **kwargs: Any) -> Any:
    """``optuna.samplers.<name>(**kwargs)``: Optuna imported when a study starts (not when the
    plugin registers), its ExperimentalWarning (TPE's grouping, the QMC sampler) silenced."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return getattr(optuna.samplers, name)(**kwargs)


class RandomStrategy(SearchStrategy):
    """Independent uniform (or log-uniform) sampling."""

    name = "random"

    def sampler(self) -> Any:
        return optuna_sampler("RandomSampler", seed=self.seed)


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
        o = self.options
        return optuna_sampler("TPESampler", seed=self.seed, n_startup_trials=o.n_startup_trials,
                              multivariate=o.multivariate, group=o.multivariate, constant_liar=o.constant_liar)


class StartupOptions(StrategyOptions):
    n_startup_trials: int = Field(5, ge=1, description="Random (or quasi-random) trials before the model is used.")


class GpStrategy(SearchStrategy):
    """Gaussian-process Bayesian optimisation (expected improvement)."""

    name = "gp"
    Options = StartupOptions
    options: StartupOptions

    def sampler(self) -> Any:
        return optuna_sampler("GPSampler", seed=self.seed, n_startup_trials=self.options.n_startup_trials,
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
        return optuna_sampler("CmaEsSampler", seed=self.seed, n_startup_trials=self.options.n_startup_trials,
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
        o = self.options
        return optuna_sampler("NSGAIISampler", population_size=o.population_size, mutation_prob=o.mutation_prob,
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
        return optuna_sampler("QMCSampler", qmc_type=self.options.qmc_type, scramble=self.options.scramble,
                              seed=self.seed, warn_independent_sampling=False)
