"""The model side of meta-learning: a sentence encoder plus a cosine head whose
weights are initialised from class prototypes in every episode.

Episodes have different label sets, so there is no fixed classifier to meta-learn.
The head of an episode starts at the normalised mean embedding of each class's
support examples (Proto-MAML style) and is then fine-tuned together with the
encoder; logits are ``head_scale * cos(embedding, w_c)``. The meta-learned state is
the encoder's trainable parameters (all of them, the top layers, or an adapter).

With ``learn=top_layers`` the frozen lower part of the encoder is run once per
example and its hidden states are cached, so inner loops only pay for the top layers.

The meta-test can adapt contrastively instead (:class:`ContrastiveAdaptation`): the encoder
alone on a contrastive loss of the support set, then a head fitted on its embeddings
(:mod:`tuneforge.contrastive`, shared with task ``fewshot_classification``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from tuneforge.contrastive import LinearHead, contrastive_pairs, pair_loss, pool, supcon_loss
from tuneforge.errors import ConfigError
from tuneforge.meta.config import ContrastiveLoss, HeadKind, MetaEvalConfig

Pairs = Sequence[tuple[int, int]]  # (example_id, class_index)


@dataclass(frozen=True)
class ContrastiveAdaptation:
    """``meta.eval.adaptation: contrastive``: the loss the encoder adapts with on a support set
    and the head fitted on its embeddings afterwards (the definitions of :mod:`tuneforge.contrastive`)."""

    loss: ContrastiveLoss = "supcon"
    temperature: float = 0.07
    pairs_per_example: int = 1
    head: HeadKind = "logistic"
    logistic_c: float = 1.0

    @classmethod
    def from_config(cls, eval_config: MetaEvalConfig) -> ContrastiveAdaptation:
        """The ``meta.eval`` keys of the same names (``contrastive_loss`` is ``loss``)."""
        return cls(eval_config.contrastive_loss, eval_config.temperature, eval_config.pairs_per_example,
                   eval_config.head, eval_config.logistic_c)


class ExampleStore:
    """Texts of every example used by a meta run, tokenized once."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.input_ids: list[list[int]] = []

    def add(self, texts: Sequence[str]) -> list[int]:
        start = len(self.texts)
        self.texts.extend(texts)
        return list(range(start, len(self.texts)))

    def tokenize(self, tokenizer: Any, max_length: int, batch: int = 2048) -> None:
        done = len(self.input_ids)
        for i in range(done, len(self.texts), batch):
            enc = tokenizer(self.texts[i : i + batch], truncation=True, max_length=max_length)
            self.input_ids.extend(enc["input_ids"])

    def __len__(self) -> int:
        return len(self.texts)


class _Passthrough(torch.nn.Module):
    """Stands in for the embedding layer when cached hidden states are fed as inputs."""

    def forward(self, inputs_embeds: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        assert inputs_embeds is not None
        return inputs_embeds


class EpisodeLearner:
    """Encoder + prototype-initialised cosine head, with flat-vector access to the
    meta-learned parameters (what the outer loop updates and averages over ranks)."""

    def __init__(
        self,
        encoder: torch.nn.Module,
        store: ExampleStore,
        *,
        learn: Literal["full", "top_layers", "adapter"] = "full",
        top_layers: int = 1,
        pooling: Literal["mean", "cls"] = "mean",
        head_scale: float = 10.0,
        pad_token_id: int = 0,
        device: torch.device | str = "cpu",
        embed_batch_size: int = 64,
        autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> None:
        self.encoder = encoder.to(device).eval()  # dropout off: inner loops are deterministic
        self.store, self.learn, self.pooling = store, learn, pooling
        self.head_scale, self.pad_token_id = head_scale, pad_token_id
        self.device = torch.device(device)
        self.embed_batch_size = embed_batch_size
        self.autocast = autocast  # the run's mixed precision (Runtime.autocast) around encoder passes
        self._cache: dict[int, torch.Tensor] = {}
        self._cut = 0
        if learn == "top_layers":
            layers = self._layers()
            if top_layers > len(layers):
                raise ConfigError(f"meta.top_layers={top_layers} but the model has {len(layers)} layers")
            self._cut = len(layers) - top_layers
            for p in encoder.parameters():
                p.requires_grad_(False)
            for layer in layers[self._cut :]:
                for p in layer.parameters():
                    p.requires_grad_(True)
        elif learn == "full":
            for p in encoder.parameters():
                p.requires_grad_(True)
        self.params = [p for p in encoder.parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError(f"meta.learn={learn}: the model has no trainable parameters")

    # -- flat parameter vectors ----------------------------------------------------------

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.params)

    def flat(self) -> torch.Tensor:
        """A copy of the meta-learned parameters as one vector."""
        return torch.cat([p.detach().reshape(-1) for p in self.params]).clone()

    def load_flat(self, vector: torch.Tensor) -> None:
        offset = 0
        with torch.no_grad():
            for p in self.params:
                n = p.numel()
                p.copy_(vector[offset : offset + n].view_as(p))
                offset += n

    def flat_grad(self, grads: Sequence[torch.Tensor | None]) -> torch.Tensor:
        return torch.cat([
            (g if g is not None else torch.zeros_like(p)).detach().reshape(-1) for g, p in zip(grads, self.params)
        ])

    def set_grad(self, vector: torch.Tensor) -> None:
        offset = 0
        for p in self.params:
            n = p.numel()
            p.grad = vector[offset : offset + n].view_as(p).clone()
            offset += n

    # -- embeddings ----------------------------------------------------------------------

    def _base(self) -> Any:
        model: Any = self.encoder
        if hasattr(model, "get_base_model"):  # a PEFT wrapper
            model = model.get_base_model()
        return model

    def _layers(self) -> torch.nn.ModuleList:
        base = self._base()
        layers = getattr(getattr(base, "encoder", None), "layer", None)
        if not isinstance(layers, torch.nn.ModuleList) or not hasattr(base, "embeddings"):
            raise ConfigError(
                f"meta.learn=top_layers needs a BERT-style encoder (embeddings + encoder.layer); "
                f"{type(base).__name__} is not one: use learn: full or learn: adapter"
            )
        return layers

    @contextlib.contextmanager
    def _truncated(self, lower: bool) -> Iterator[None]:
        """The encoder with only its lower (frozen) or upper (trainable) layers."""
        base: Any = self._base()
        layers = self._layers()
        embeddings = base.embeddings
        base.encoder.layer = torch.nn.ModuleList(list(layers[: self._cut] if lower else layers[self._cut :]))
        if not lower:
            base.embeddings = _Passthrough()
        try:
            yield
        finally:
            base.encoder.layer = layers
            base.embeddings = embeddings

    def _pad(self, ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        seqs = [self.store.input_ids[i] for i in ids]
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            input_ids[row, : len(s)] = torch.tensor(s)
            mask[row, : len(s)] = 1
        return input_ids.to(self.device), mask.to(self.device)

    def precompute(self, ids: Sequence[int]) -> None:
        """Cache the frozen lower layers' output for ``ids`` (learn=top_layers only)."""
        if self.learn != "top_layers":
            return
        todo = sorted({i for i in ids if i not in self._cache}, key=lambda i: len(self.store.input_ids[i]))
        with torch.no_grad(), self._truncated(lower=True), self.autocast():
            for start in range(0, len(todo), self.embed_batch_size):
                chunk = todo[start : start + self.embed_batch_size]
                input_ids, mask = self._pad(chunk)
                hidden = self.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
                for row, ex in enumerate(chunk):
                    self._cache[ex] = hidden[row, : int(mask[row].sum())].to(torch.bfloat16).cpu()

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return pool(hidden, mask, self.pooling)

    def _embed_batch(self, ids: Sequence[int]) -> torch.Tensor:
        input_ids, mask = self._pad(ids)
        if self.learn != "top_layers":
            with self.autocast():
                hidden = self.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
            return self._pool(hidden.float(), mask)
        self.precompute(ids)
        states = torch.zeros((len(ids), input_ids.shape[1], self._cache[ids[0]].shape[-1]))
        for row, ex in enumerate(ids):
            cached = self._cache[ex]
            states[row, : cached.shape[0]] = cached.float()
        with self._truncated(lower=False), self.autocast():
            hidden = self.encoder(inputs_embeds=states.to(self.device), attention_mask=mask).last_hidden_state
        return self._pool(hidden.float(), mask)

    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        """Sentence embeddings of examples ``ids`` (with grad when parameters need it)."""
        parts = [self._embed_batch(ids[i : i + self.embed_batch_size]) for i in range(0, len(ids), self.embed_batch_size)]
        return torch.cat(parts)

    # -- the head ------------------------------------------------------------------------

    def prototype_head(self, pairs: Pairs, num_classes: int | None = None) -> torch.Tensor:
        """Trainable head weights (classes x hidden): normalised class means of ``pairs``."""
        classes = torch.tensor([c for _, c in pairs])
        n = num_classes or int(classes.max()) + 1
        with torch.no_grad():
            emb = F.normalize(self.embed([ex for ex, _ in pairs]), dim=-1)
            head = torch.zeros((n, emb.shape[-1]), device=emb.device).index_add_(0, classes.to(emb.device), emb)
            head = F.normalize(head, dim=-1)
        return head.requires_grad_(True)

    def logits(self, embeddings: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        return self.head_scale * F.normalize(embeddings, dim=-1) @ F.normalize(head, dim=-1).T

    def loss(self, pairs: Pairs, head: torch.Tensor) -> torch.Tensor:
        targets = torch.tensor([c for _, c in pairs], device=self.device)
        return F.cross_entropy(self.logits(self.embed([ex for ex, _ in pairs]), head), targets)

    def accuracy(self, pairs: Pairs, head: torch.Tensor) -> float:
        with torch.no_grad():
            predicted = self.logits(self.embed([ex for ex, _ in pairs]), head).argmax(-1).cpu()
        return float((predicted == torch.tensor([c for _, c in pairs])).float().mean())

    # -- the inner loop ------------------------------------------------------------------

    def adapt(
        self,
        pairs: Pairs,
        head: torch.Tensor,
        *,
        steps: int,
        lr: float,
        optimizer: Literal["sgd", "adam"] = "adam",
        batch_size: int | None = None,
        rng: random.Random | None = None,
    ) -> float:
        """Fine-tune the parameters and ``head`` in place on ``pairs``; returns the last loss."""
        return self._descend([*self.params, head], pairs, lambda batch: self.loss(batch, head), steps=steps, lr=lr,
                             optimizer=optimizer, batch_size=batch_size, rng=rng)

    def _descend(
        self,
        params: list[torch.Tensor],
        pairs: Pairs,
        loss_of: Callable[[list[tuple[int, int]]], torch.Tensor],
        *,
        steps: int,
        lr: float,
        optimizer: Literal["sgd", "adam"],
        batch_size: int | None,
        rng: random.Random | None,
    ) -> float:
        """``steps`` steps of a fresh optimizer on ``loss_of(batch)``, each batch ``batch_size``
        examples of ``pairs`` drawn by ``rng`` (all of them by default); returns the last loss."""
        opt: torch.optim.Optimizer = (
            torch.optim.SGD(params, lr=lr) if optimizer == "sgd" else torch.optim.Adam(params, lr=lr)
        )
        rng = rng or random.Random(0)
        last = float("nan")
        for _ in range(steps):
            batch = list(pairs) if batch_size is None or batch_size >= len(pairs) else rng.sample(list(pairs), batch_size)
            loss = loss_of(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            last = float(loss.detach())
        opt.zero_grad(set_to_none=True)
        return last

    # -- contrastive adaptation (meta.eval.adaptation=contrastive) --------------------------

    def contrastive_loss(self, pairs: Pairs, method: ContrastiveAdaptation, rng: random.Random | None = None) -> torch.Tensor:
        """``method.loss`` over the embeddings of ``pairs``. SupCon sees the batch twice, as task
        ``fewshot_classification`` does; dropout is off here, so the two views are equal and at
        1-shot an example's only positive is its own copy (the loss then spreads the classes apart).
        The ``pairs`` loss draws ``method.pairs_per_example`` rounds of pairs with ``rng``."""
        embeddings = self.embed([ex for ex, _ in pairs])
        labels = [c for _, c in pairs]
        if method.loss == "supcon":
            targets = torch.tensor(labels + labels, device=embeddings.device)
            return supcon_loss(torch.cat([embeddings, embeddings]), targets, method.temperature)
        drawn = contrastive_pairs(labels, method.pairs_per_example, (rng or random.Random(0)).randrange(2**31))
        return pair_loss(embeddings[[i for i, _, _ in drawn]], embeddings[[j for _, j, _ in drawn]],
                         torch.tensor([t for _, _, t in drawn], device=embeddings.device))

    def adapt_contrastive(
        self,
        pairs: Pairs,
        method: ContrastiveAdaptation,
        *,
        steps: int,
        lr: float,
        optimizer: Literal["sgd", "adam"] = "adam",
        batch_size: int | None = None,
        rng: random.Random | None = None,
    ) -> float:
        """Adapt the parameters in place on ``pairs`` with ``method``'s contrastive loss; returns the last loss."""
        rng = rng or random.Random(0)
        return self._descend(list(self.params), pairs, lambda batch: self.contrastive_loss(batch, method, rng),
                             steps=steps, lr=lr, optimizer=optimizer, batch_size=batch_size, rng=rng)

    def _normalised(self, pairs: Pairs) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            embeddings = F.normalize(self.embed([ex for ex, _ in pairs]), dim=-1)
        return embeddings.cpu().numpy(), np.array([c for _, c in pairs])

    def fit_head(self, pairs: Pairs, method: ContrastiveAdaptation) -> LinearHead:
        """``method.head`` fitted on the normalised embeddings of ``pairs`` (task ``fewshot_classification``'s heads)."""
        embeddings, labels = self._normalised(pairs)
        return LinearHead.fit(method.head, embeddings, labels, method.logistic_c)

    def head_accuracy(self, pairs: Pairs, head: LinearHead) -> float:
        """Accuracy of a fitted head on ``pairs``."""
        embeddings, labels = self._normalised(pairs)
        return float((head.predict(embeddings)[0] == labels).mean())

    # -- export --------------------------------------------------------------------------

    def export(self, directory: Path, tokenizer: Any, info: dict[str, Any]) -> Path:
        """Save the encoder in Hugging Face format (adapters merged in) with the tokenizer:
        a directory ``model.name_or_path`` of ``tuneforge train``/``search`` can start from."""
        directory.mkdir(parents=True, exist_ok=True)
        model: Any = self.encoder
        if hasattr(model, "merge_and_unload"):
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(str(directory))
        tokenizer.save_pretrained(str(directory))
        (directory / "tuneforge_meta.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
        return directory
