"""Task collections and N-way K-shot episodes.

A :class:`LabelPool` is one labelled source of examples (an ordinary task's data,
or a subset of one data set's labels). An :class:`EpisodeSampler` draws episodes
from pools: ``ways`` labels of one pool, ``shots`` support and ``query`` query
examples per label, disjoint. Episode ``i`` depends only on ``(seed, i)``, so any
process can draw any episode and a run is reproducible whatever the world size.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from tuneforge.errors import ConfigError


@dataclass
class LabelPool:
    """Examples of one task grouped by label; ``by_label`` maps a label to example ids
    (indices into the shared :class:`tuneforge.meta.learner.ExampleStore`)."""

    name: str
    by_label: dict[str, list[int]]

    @property
    def labels(self) -> list[str]:
        return sorted(self.by_label)

    def subset(self, name: str, labels: Sequence[str]) -> LabelPool:
        return LabelPool(name, {lab: list(self.by_label[lab]) for lab in labels})


@dataclass(frozen=True)
class Episode:
    """One few-shot task. ``support``/``query`` hold ``(example_id, class_index)`` pairs;
    class ``i`` is ``labels[i]`` of pool ``pool``."""

    pool: str
    labels: tuple[str, ...]
    support: tuple[tuple[int, int], ...]
    query: tuple[tuple[int, int], ...]

    @property
    def ways(self) -> int:
        return len(self.labels)


def _count(value: float, total: int) -> int:
    return int(value) if value >= 1 else max(1, round(value * total))


def split_labels(
    labels: Sequence[str], val: float, test: float, seed: int
) -> tuple[list[str], list[str], list[str]]:
    """Disjoint (meta-train, meta-val, meta-test) label lists. ``val``/``test`` are a
    fraction (< 1) or a count of labels; the split is a seeded shuffle of the sorted labels."""
    ordered = sorted(set(labels))
    n_val, n_test = _count(val, len(ordered)), _count(test, len(ordered))
    if n_val + n_test >= len(ordered):
        raise ConfigError(
            f"meta.val_labels={val} and meta.test_labels={test} leave no meta-train labels out of "
            f"{len(ordered)}; lower them"
        )
    random.Random(f"labels:{seed}").shuffle(ordered)
    test_set, val_set = ordered[:n_test], ordered[n_test : n_test + n_val]
    return sorted(ordered[n_test + n_val :]), sorted(val_set), sorted(test_set)


class EpisodeSampler:
    """Seeded N-way K-shot episodes with query sets from one or more pools.

    Only labels with at least ``shots + query`` examples take part; a pool is used
    when it has ``ways`` such labels. Pools are drawn in proportion to their size.
    """

    def __init__(self, pools: Sequence[LabelPool], ways: int, shots: int, query: int, seed: int,
                 where: str = "meta") -> None:
        self.ways, self.shots, self.query, self.seed = ways, shots, query, seed
        need = shots + query
        self.pools: list[LabelPool] = []
        for pool in pools:
            usable = [lab for lab in pool.labels if len(pool.by_label[lab]) >= need]
            if len(usable) >= ways:
                self.pools.append(pool.subset(pool.name, usable))
        if not self.pools:
            detail = ", ".join(
                f"{p.name}: {sum(len(v) >= need for v in p.by_label.values())} of {len(p.by_label)}" for p in pools
            ) or "no pools"
            raise ConfigError(
                f"{where}: no task has {ways} labels with at least {need} examples (shots {shots} + query "
                f"{query}); labels with enough examples per task: {detail}. Lower ways/shots/query or add data."
            )
        self._weights = [sum(len(v) for v in p.by_label.values()) for p in self.pools]

    def episode(self, index: int) -> Episode:
        rng = random.Random(f"episode:{self.seed}:{self.ways}:{self.shots}:{self.query}:{index}")
        pool = self.pools[0] if len(self.pools) == 1 else rng.choices(self.pools, weights=self._weights)[0]
        labels = tuple(rng.sample(pool.labels, self.ways))
        support: list[tuple[int, int]] = []
        query: list[tuple[int, int]] = []
        for cls, label in enumerate(labels):
            chosen = rng.sample(pool.by_label[label], self.shots + self.query)
            support += [(ex, cls) for ex in chosen[: self.shots]]
            query += [(ex, cls) for ex in chosen[self.shots :]]
        return Episode(pool.name, labels, tuple(support), tuple(query))

    def episodes(self, indices: Sequence[int]) -> list[Episode]:
        return [self.episode(i) for i in indices]


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of a normal-approximation 95% confidence interval."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n == 1:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, 1.96 * math.sqrt(var / n)
