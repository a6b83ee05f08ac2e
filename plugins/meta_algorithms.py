"""Built-in meta-learning algorithms: Reptile and first-order MAML.

Both adapt to an episode with the configured inner loop, starting from a head
initialised at the class prototypes of the support set.

* ``reptile`` (Nichol et al., 2018): adapt on all the episode's examples (support
  and query); the meta-gradient is ``theta - phi``, so an outer SGD step with
  ``outer_lr = epsilon`` moves the start ``epsilon`` of the way towards ``phi``.
* ``fomaml`` (Finn et al., 2017, first-order): adapt on the support set; the
  meta-gradient is the gradient of the query loss at the adapted ``phi``.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from tuneforge import hookimpl
from tuneforge.meta.algorithm import MetaAlgorithm, TaskGradient
from tuneforge.meta.episodes import Episode
from tuneforge.meta.learner import EpisodeLearner


class Reptile(MetaAlgorithm):
    name = "reptile"

    def task_gradient(self, learner: EpisodeLearner, episode: Episode, rng: random.Random) -> TaskGradient:
        theta = learner.flat()
        head = learner.prototype_head(episode.support, episode.ways)
        loss = self.inner_loop(learner, [*episode.support, *episode.query], head, rng)
        return TaskGradient(theta - learner.flat(), loss)


class FOMAML(MetaAlgorithm):
    name = "fomaml"

    def task_gradient(self, learner: EpisodeLearner, episode: Episode, rng: random.Random) -> TaskGradient:
        head = learner.prototype_head(episode.support, episode.ways)
        self.inner_loop(learner, list(episode.support), head, rng)
        query_loss = learner.loss(episode.query, head)
        grads = torch.autograd.grad(query_loss, learner.params, allow_unused=True)
        return TaskGradient(learner.flat_grad(grads), float(query_loss.detach()))


@hookimpl
def tf_register_meta_algorithms(register: Any) -> None:
    register("reptile", Reptile)
    register("fomaml", FOMAML)
