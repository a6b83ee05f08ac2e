"""Contrastive few-shot adaptation of a sentence encoder: pooling, the two losses and the
heads fitted on the adapted embeddings. One implementation serves the task plugin
``fewshot_classification`` (``tuneforge train``, docs/few-shot.md) and the meta-test's
``meta.eval.adaptation: contrastive`` (``tuneforge meta``, docs/meta-learning.md).

* :func:`supcon_loss`: supervised contrastive loss (Khosla et al., 2020);
* :func:`contrastive_pairs` + :func:`pair_loss`: SetFit's same/different-label pairs scored by
  the squared error of their cosine similarity (sentence-transformers' ``CosineSimilarityLoss``);
* :class:`LinearHead`: ``prototype`` (nearest normalised class mean) or ``logistic``
  (scikit-learn logistic regression with inverse regularisation ``C``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Sentence embeddings from the last hidden states: the ``[CLS]`` vector or the masked mean."""
    if pooling == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def supcon_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., 2020, L_out): for each anchor, the mean log
    probability of its positives (same label, itself excluded) among all other examples."""
    z = F.normalize(embeddings.float(), dim=-1)
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    sim = (z @ z.T / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    has_positive = positives.any(1)
    per_anchor = log_prob.masked_fill(~positives, 0.0).sum(1) / positives.sum(1).clamp(min=1)
    return -per_anchor[has_positive].mean()


def contrastive_pairs(labels: list[int], rounds: int, seed: int) -> list[tuple[int, int, float]]:
    """``(i, j, target)`` pairs: per round and example ``i``, one ``j`` of the same label
    (target 1.0; ``i`` itself when it is its label's only example) and one of another label (0.0)."""
    rng = random.Random(seed)
    by_label: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_label.setdefault(y, []).append(i)
    pairs: list[tuple[int, int, float]] = []
    for _ in range(rounds):
        for i, y in enumerate(labels):
            same = [j for j in by_label[y] if j != i] or [i]
            pairs.append((i, rng.choice(same), 1.0))
            other = rng.choice([z for z in by_label if z != y]) if len(by_label) > 1 else y
            pairs.append((i, rng.choice(by_label[other]), 0.0))
    return pairs


def pair_loss(first: torch.Tensor, second: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Squared error between the cosine similarity of each pair's embeddings and its target
    (1: same label, 0: different labels)."""
    return F.mse_loss(F.cosine_similarity(first, second), targets.to(first.dtype))


@dataclass
class LinearHead:
    """A fitted head: ``scores = embeddings @ weights.T + bias`` over ``classes`` (label ids)."""

    kind: str
    classes: np.ndarray
    weights: np.ndarray
    bias: np.ndarray

    @classmethod
    def fit(cls, kind: str, embeddings: np.ndarray, labels: np.ndarray, c: float) -> LinearHead:
        """Fit on (normalised) ``embeddings``: class means, or logistic regression with ``C = c``."""
        classes = np.unique(labels)
        if kind == "prototype":
            centres = np.stack([embeddings[labels == y].mean(0) for y in classes])
            centres /= np.linalg.norm(centres, axis=1, keepdims=True).clip(min=1e-12)
            return cls(kind, classes, centres, np.zeros(len(classes)))
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=c, max_iter=2000).fit(embeddings, labels)
        weights, bias = clf.coef_, clf.intercept_
        if len(classes) == 2:  # one logit row for two classes: the same softmax as two rows +-/2
            weights, bias = np.concatenate([-weights / 2, weights / 2]), np.concatenate([-bias / 2, bias / 2])
        return cls(kind, classes, weights, bias)

    def predict(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(label ids, confidence): the logistic probability, or the prototype's cosine similarity."""
        scores = embeddings @ self.weights.T + self.bias
        best = scores.argmax(1)
        if self.kind == "prototype":
            confidence = scores.max(1)
        else:
            z = np.exp(scores - scores.max(1, keepdims=True))
            confidence = (z / z.sum(1, keepdims=True)).max(1)
        return self.classes[best], confidence

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "classes": self.classes.tolist(), "weights": self.weights.tolist(),
                "bias": self.bias.tolist()}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> LinearHead:
        return cls(raw["kind"], np.asarray(raw["classes"]), np.asarray(raw["weights"]), np.asarray(raw["bias"]))
