"""Hyperparameter search: a study of trials, each an ordinary training run with overrides.

* :mod:`tuneforge.search.space` the ``search.params`` space and its validation
* :mod:`tuneforge.search.strategy` the interface strategy plugins implement
* :mod:`tuneforge.search.runner` the study runner (workers, storage, resume)
* :mod:`tuneforge.search.trial` the trial process and its reporter plugin (pruning)
* :mod:`tuneforge.search.report` best config, trials.csv, plots, report.md

See docs/search.md.
"""

from tuneforge.search.objective import Objective
from tuneforge.search.space import Param, SearchSpace
from tuneforge.search.strategy import SearchStrategy, StrategyOptions

__all__ = ["Objective", "Param", "SearchSpace", "SearchStrategy", "StrategyOptions"]
