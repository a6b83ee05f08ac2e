"""Hyperparameter search: a study of trials, each an ordinary training run with overrides.

* :mod:`tuneforge.search.config` the ``search:`` section of the run config
* :mod:`tuneforge.search.space` the ``search.params`` space and its validation
* :mod:`tuneforge.search.strategy` the interface strategy plugins implement
* :mod:`tuneforge.search.runner` the study runner (workers, storage, resume)
* :mod:`tuneforge.search.trial` the trial process and its reporter plugin (pruning)
* :mod:`tuneforge.search.report` best config, trials.csv, plots, report.md

See docs/search.md.
"""

from typing import TYPE_CHECKING

from tuneforge.lazy import lazy_exports

if TYPE_CHECKING:
    from tuneforge.search.objective import Objective
    from tuneforge.search.space import Param, SearchSpace
    from tuneforge.search.strategy import SearchStrategy, StrategyOptions

__all__ = ["Objective", "Param", "SearchSpace", "SearchStrategy", "StrategyOptions"]

# Imported on first use: these build on tuneforge.config, which imports search.config.
__getattr__ = lazy_exports(
    __name__, __all__, ("tuneforge.search.objective", "tuneforge.search.space", "tuneforge.search.strategy")
)
