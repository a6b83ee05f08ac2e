"""Reptile and FOMAML updates on a tiny model against a step computed by hand
(a separate plain-torch implementation of the same inner loop)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tuneforge.config import MetaConfig
from tuneforge.meta.episodes import EpisodeSampler, LabelPool
from tuneforge.meta.learner import EpisodeLearner, ExampleStore
from tuneforge.meta.loops import meta_test, meta_train
from tuneforge.plugins.meta_algorithms import FOMAML, Reptile

SCALE, ALPHA, EPS = 5.0, 0.1, 0.5


class BagEncoder(torch.nn.Module):
    """Embedding + linear: a model small enough to check updates exactly."""

    def __init__(self, vocab: int = 12, dim: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(vocab, dim)
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: object) -> SimpleNamespace:
        return SimpleNamespace(last_hidden_state=self.proj(self.emb(input_ids)))


def make_setup() -> tuple[EpisodeLearner, EpisodeSampler, ExampleStore]:
    store = ExampleStore()
    rng = random.Random(0)
    by_label: dict[str, list[int]] = {}
    for label in range(4):
        for _ in range(4):
            ex = store.add([f"x{len(store)}"])[0]
            store.input_ids.append([1 + label * 2, rng.randrange(1, 12), rng.randrange(1, 12)][: rng.randrange(2, 4)])
            by_label.setdefault(f"c{label}", []).append(ex)
    learner = EpisodeLearner(BagEncoder(), store, learn="full", head_scale=SCALE)
    sampler = EpisodeSampler([LabelPool("p", by_label)], ways=2, shots=2, query=1, seed=0)
    return learner, sampler, store


def reference_embed(params: dict[str, torch.Tensor], store: ExampleStore, ids: list[int]) -> torch.Tensor:
    rows = []
    for i in ids:
        tokens = torch.tensor(store.input_ids[i])
        h = params["emb.weight"][tokens] @ params["proj.weight"].T + params["proj.bias"]
        rows.append(h.mean(0))
    return torch.stack(rows)


def reference_loss(params: dict[str, torch.Tensor], head: torch.Tensor, store: ExampleStore, pairs) -> torch.Tensor:
    emb = F.normalize(reference_embed(params, store, [e for e, _ in pairs]), dim=-1)
    logits = SCALE * emb @ F.normalize(head, dim=-1).T
    return F.cross_entropy(logits, torch.tensor([c for _, c in pairs]))


def reference_adapt(params, store, episode, pairs, steps):
    """Plain SGD on (params, prototype head), written out step by step."""
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    with torch.no_grad():
        emb = F.normalize(reference_embed(params, store, [e for e, _ in episode.support]), dim=-1)
        head = torch.stack([emb[[c == k for _, c in episode.support]].sum(0) for k in range(episode.ways)])
        head = F.normalize(head, dim=-1)
    head.requires_grad_(True)
    for _ in range(steps):
        loss = reference_loss(params, head, store, pairs)
        grads = torch.autograd.grad(loss, [*params.values(), head])
        with torch.no_grad():
            for (k, v), g in zip(list(params.items()), grads):
                params[k] = (v - ALPHA * g).requires_grad_(True)
            head = (head - ALPHA * grads[-1]).requires_grad_(True)
    return params, head


def named(learner: EpisodeLearner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learner.encoder.named_parameters()}


def flatten(params: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in params.values()])


def config(**kw: object) -> MetaConfig:
    base = {"inner_steps": 2, "inner_lr": ALPHA, "inner_optimizer": "sgd", "outer_lr": EPS,
            "outer_optimizer": "sgd", "outer_schedule": "constant", "meta_batch_size": 2, "meta_steps": 1}
    return MetaConfig(**{**base, **kw})


@pytest.mark.parametrize("algorithm", ["reptile", "fomaml"])
def test_one_outer_step_matches_hand_computed(algorithm: str) -> None:
    learner, sampler, store = make_setup()
    theta = named(learner)
    expected_grad = torch.zeros_like(flatten(theta))
    for index in range(2):  # meta_batch_size 2, step 0 -> episodes 0 and 1
        ep = sampler.episode(index)
        if algorithm == "reptile":
            phi, _ = reference_adapt(theta, store, ep, [*ep.support, *ep.query], steps=2)
            expected_grad += flatten(theta) - flatten(phi)
        else:
            phi, head = reference_adapt(theta, store, ep, list(ep.support), steps=2)
            loss = reference_loss(phi, head.detach(), store, ep.query)
            expected_grad += torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(phi.values()))])
    expected = flatten(theta) - EPS * expected_grad / 2

    cls = Reptile if algorithm == "reptile" else FOMAML
    cfg = config()
    history = meta_train(learner, cls(cfg), sampler, cfg)
    assert len(history.steps) == 1
    assert torch.allclose(learner.flat(), expected, atol=1e-6)
    assert not torch.allclose(learner.flat(), flatten(theta))  # it did move


def test_reptile_task_gradient_is_theta_minus_phi_and_restores_nothing() -> None:
    learner, sampler, store = make_setup()
    theta = named(learner)
    ep = sampler.episode(5)
    update = Reptile(config(inner_steps=1)).task_gradient(learner, ep, random.Random(0))
    phi, _ = reference_adapt(theta, store, ep, [*ep.support, *ep.query], steps=1)
    assert torch.allclose(update.vector, flatten(theta) - flatten(phi), atol=1e-6)
    assert torch.allclose(learner.flat(), flatten(phi), atol=1e-6)  # the core, not the algorithm, restores theta
    assert update.loss > 0


def test_linear_outer_schedule_decays_to_zero() -> None:
    learner, sampler, _ = make_setup()
    cfg = config(meta_steps=4, outer_schedule="linear")
    history = meta_train(learner, Reptile(cfg), sampler, cfg)
    assert [round(s["outer_lr"], 6) for s in history.steps] == [0.5, 0.375, 0.25, 0.125]


def test_meta_test_restores_start_and_scores_every_episode() -> None:
    learner, sampler, _ = make_setup()
    start = learner.flat()
    scores = meta_test(learner, start, sampler, 7, steps=2, lr=ALPHA, optimizer="sgd")
    assert len(scores.accuracies) == 7 and all(a in (0.0, 0.5, 1.0) for a in scores.accuracies)
    assert torch.equal(learner.flat(), start)
    again = meta_test(learner, start, sampler, 7, steps=2, lr=ALPHA, optimizer="sgd")
    assert again.accuracies == scores.accuracies
