"""The meta-learning algorithm interface (plugins register subclasses through
``tf_register_meta_algorithms``; ``meta.algorithm`` selects one).

An algorithm answers one question: given the current start ``theta`` (loaded in
the learner) and one episode, what is this episode's contribution to the
meta-gradient? The core averages contributions over the meta-batch and over
processes and applies ``theta <- theta - outer_lr * mean`` (or Adam on it)::

    class Reptile(MetaAlgorithm):
        name = "reptile"

        def task_gradient(self, learner, episode, rng):
            theta = learner.flat()
            head = learner.prototype_head(episode.support)
            loss = learner.adapt(episode.support + episode.query, head, ...)
            return TaskGradient(theta - learner.flat(), loss)

The learner's parameters may be left anywhere; the core restores ``theta``.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from tuneforge.config import MetaConfig
from tuneforge.meta.episodes import Episode
from tuneforge.meta.learner import EpisodeLearner


@dataclass
class TaskGradient:
    """One episode's meta-gradient (a flat vector over ``learner.params``) and a loss to log."""

    vector: torch.Tensor
    loss: float


class MetaAlgorithm(ABC):
    """Base class of meta-learning algorithm plugins."""

    name: ClassVar[str] = ""

    def __init__(self, config: MetaConfig) -> None:
        self.config = config

    def inner_loop(self, learner: EpisodeLearner, pairs: list[tuple[int, int]], head: torch.Tensor,
                   rng: random.Random) -> float:
        """Adapt ``learner`` and ``head`` on ``pairs`` with the configured inner loop."""
        c = self.config
        return learner.adapt(pairs, head, steps=c.inner_steps, lr=c.inner_lr, optimizer=c.inner_optimizer, rng=rng)

    @abstractmethod
    def task_gradient(self, learner: EpisodeLearner, episode: Episode, rng: random.Random) -> TaskGradient:
        """The meta-gradient contribution of ``episode``, starting from the loaded parameters."""
