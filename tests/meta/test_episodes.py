from __future__ import annotations

import pytest

from tuneforge.errors import ConfigError
from tuneforge.meta.episodes import EpisodeSampler, LabelPool, mean_ci95, split_labels


def make_pool(n_labels: int = 20, per_label: int = 12) -> LabelPool:
    return LabelPool("p", {f"l{i:02d}": list(range(i * per_label, (i + 1) * per_label)) for i in range(n_labels)})


def test_split_labels_disjoint_counts_and_seeded() -> None:
    labels = [f"l{i}" for i in range(77)]
    train, val, test = split_labels(labels, 0.2, 15, seed=3)
    assert (len(train), len(val), len(test)) == (47, 15, 15)
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert set(train) | set(val) | set(test) == set(labels)
    assert split_labels(list(reversed(labels)), 0.2, 15, seed=3) == (train, val, test)
    assert split_labels(labels, 0.2, 15, seed=4) != (train, val, test)


def test_split_labels_refuses_empty_train() -> None:
    with pytest.raises(ConfigError, match="no meta-train labels"):
        split_labels(["a", "b", "c"], 1, 2, seed=0)


def test_episode_shapes_and_disjoint_support_query() -> None:
    sampler = EpisodeSampler([make_pool()], ways=5, shots=3, query=4, seed=0)
    for i in range(20):
        ep = sampler.episode(i)
        assert ep.ways == 5 and len(set(ep.labels)) == 5
        assert len(ep.support) == 15 and len(ep.query) == 20
        for cls in range(5):
            assert sum(c == cls for _, c in ep.support) == 3
            assert sum(c == cls for _, c in ep.query) == 4
        support_ids = {ex for ex, _ in ep.support}
        assert not support_ids & {ex for ex, _ in ep.query}
        pool = make_pool()
        for ex, c in ep.support + ep.query:  # every example belongs to its class's label
            assert ex in pool.by_label[ep.labels[c]]


def test_episodes_are_deterministic_per_index() -> None:
    a = EpisodeSampler([make_pool()], 5, 2, 2, seed=7)
    b = EpisodeSampler([make_pool()], 5, 2, 2, seed=7)
    assert [b.episode(i) for i in (9, 3, 0)] == [a.episode(i) for i in (9, 3, 0)]  # order-independent
    assert a.episode(0) != a.episode(1)
    assert EpisodeSampler([make_pool()], 5, 2, 2, seed=8).episode(0) != a.episode(0)


def test_sampler_skips_small_labels_and_explains_when_nothing_fits() -> None:
    pool = make_pool(n_labels=6, per_label=12)
    pool.by_label["l00"] = pool.by_label["l00"][:3]
    sampler = EpisodeSampler([pool], ways=5, shots=4, query=4, seed=0)
    assert all("l00" not in sampler.episode(i).labels for i in range(30))
    with pytest.raises(ConfigError, match="no task has 6 labels"):
        EpisodeSampler([pool], ways=6, shots=4, query=4, seed=0)


def test_sampler_draws_from_several_pools_with_train_labels_only() -> None:
    p1 = LabelPool("a", {f"a{i}": list(range(i * 10, i * 10 + 10)) for i in range(4)})
    p2 = LabelPool("b", {f"b{i}": list(range(100 + i * 10, 110 + i * 10)) for i in range(4)})
    sampler = EpisodeSampler([p1, p2], ways=3, shots=2, query=2, seed=0)
    eps = sampler.episodes(range(40))
    assert {ep.pool for ep in eps} == {"a", "b"}
    for ep in eps:  # an episode never mixes tasks
        assert all(lab.startswith(ep.pool) for lab in ep.labels)


def test_mean_ci95() -> None:
    mean, ci = mean_ci95([0.0, 1.0] * 50)
    assert mean == pytest.approx(0.5)
    assert ci == pytest.approx(1.96 * (0.25 * 100 / 99) ** 0.5 / 10)
