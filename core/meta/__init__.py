"""Meta-learning across tasks (``tuneforge meta``): Reptile / first-order MAML
meta-training of a start that adapts to a new task from a few examples.

* :mod:`tuneforge.meta.config`    the ``meta:`` section of the run config
* :mod:`tuneforge.meta.episodes`  task collections, label splits, N-way K-shot episodes
* :mod:`tuneforge.meta.learner`   encoder + prototype-initialised cosine head, inner loop, contrastive adaptation
* :mod:`tuneforge.meta.algorithm` the :class:`MetaAlgorithm` plugin interface
* :mod:`tuneforge.meta.loops`     meta-training, the multi-task baseline, meta-test
* :mod:`tuneforge.meta.run`       the command: collection -> meta-train -> baselines -> table
"""

from typing import TYPE_CHECKING

from tuneforge.lazy import lazy_exports

if TYPE_CHECKING:
    from tuneforge.meta.algorithm import MetaAlgorithm, TaskGradient
    from tuneforge.meta.episodes import Episode, EpisodeSampler, LabelPool, mean_ci95, split_labels

__all__ = ["Episode", "EpisodeSampler", "LabelPool", "MetaAlgorithm", "TaskGradient", "mean_ci95", "split_labels"]

# Imported on first use: the algorithm imports torch, and tuneforge.config imports meta.config.
__getattr__ = lazy_exports(__name__, __all__, ("tuneforge.meta.episodes", "tuneforge.meta.algorithm"))
