"""The Optuna sampler of the ``reinforce`` strategy: a REINFORCE policy controller.

Williams (1992) policy gradient, as in Zoph & Le's architecture-search controller,
here with a factorised policy instead of an RNN: each categorical parameter has
softmax logits, each numeric one a Gaussian over its [0, 1]-scaled (log-scaled
where ``log``) range. The policy is re-derived from the study's history on every
proposal by replaying the updates in trial order::

    theta += lr * advantage * grad log pi(action)

with advantage = reward - moving-average baseline, divided by the running reward
spread. Any number of workers, on any machine, and a resumed study therefore see
the same policy. Pruned trials get the worst finished reward.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna


class ReinforceSampler(optuna.samplers.BaseSampler):
    """See the module docstring; ``options`` is the strategy's :class:`.ReinforceOptions`."""

    def __init__(self, options: Any, seed: int, direction: str) -> None:
        self.o, self.seed = options, seed
        self.sign = 1.0 if direction == "maximize" else -1.0

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return {}

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
        dist = param_distribution
        policy = self.policy(study, param_name, dist)
        rng = np.random.RandomState((self.seed * 1_000_003 + trial.number * 7919 + _h(param_name)) % 2**32)
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            p = _softmax(policy["logits"])
            return dist.choices[int(rng.choice(len(p), p=p))]
        u = float(np.clip(rng.normal(policy["mean"], policy["std"]), 0.0, 1.0))
        return _from_unit(u, dist)

    def policy(self, study: Any, name: str, dist: Any) -> dict[str, Any]:
        """The policy of parameter ``name`` after replaying every finished trial."""
        trials = sorted((t for t in study.get_trials(deepcopy=False)
                         if t.state.name in ("COMPLETE", "PRUNED") and name in t.params), key=lambda t: t.number)
        done = [self.sign * t.values[0] for t in trials if t.state.name == "COMPLETE" and t.values]
        worst = min(done) if done else 0.0
        categorical = isinstance(dist, optuna.distributions.CategoricalDistribution)
        logits = np.zeros(len(dist.choices)) if categorical else np.zeros(0)
        mean, log_std = 0.5, math.log(self.o.init_std)
        min_log_std = math.log(self.o.min_std)
        baseline, spread = 0.0, 0.0
        for i, t in enumerate(trials):
            reward = self.sign * t.values[0] if t.state.name == "COMPLETE" and t.values else worst
            if i == 0:
                baseline = reward
                continue
            diff = reward - baseline
            spread = abs(diff) if spread == 0.0 else self.o.baseline_decay * spread + (1 - self.o.baseline_decay) * abs(diff)
            adv = float(np.clip(diff / spread, -3.0, 3.0)) if spread > 0 else 0.0
            if categorical:
                grad = -_softmax(logits)
                grad[list(dist.choices).index(t.params[name])] += 1.0
                logits = logits + self.o.learning_rate * adv * grad
            else:
                std = max(math.exp(log_std), self.o.min_std)
                z = (_to_unit(t.params[name], dist) - mean) / std
                mean = float(np.clip(mean + self.o.learning_rate * adv * z * std, 0.0, 1.0))
                log_std = max(min_log_std, log_std + 0.5 * self.o.learning_rate * adv * (z * z - 1.0))
            baseline = self.o.baseline_decay * baseline + (1 - self.o.baseline_decay) * reward
        return {"logits": logits, "mean": mean, "std": max(math.exp(log_std), self.o.min_std)}


def _h(name: str) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(name))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _to_unit(value: float, dist: Any) -> float:
    lo, hi = float(dist.low), float(dist.high)
    if hi == lo:
        return 0.5
    if dist.log:
        return (math.log(value) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return (float(value) - lo) / (hi - lo)


def _from_unit(u: float, dist: Any) -> Any:
    lo, hi = float(dist.low), float(dist.high)
    value = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))) if dist.log else lo + u * (hi - lo)
    step = getattr(dist, "step", None)
    if step:
        value = lo + round((value - lo) / step) * step
    value = min(max(value, lo), hi)
    return round(value) if isinstance(dist, optuna.distributions.IntDistribution) else float(value)
