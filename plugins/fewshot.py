"""Few-shot text classification by contrastive adaptation of a sentence encoder
(docs/few-shot.md): task ``fewshot_classification``.

Training adapts the encoder's sentence embeddings (``pooling`` of its last hidden states)
with one of two losses over the K-shot training set:

* ``pairs`` (SetFit's recipe): for every example and each of ``pairs_per_example``
  rounds, one pair with a random example of the same label (target 1) and one with a random
  example of another label (target 0); the loss is the squared error between the pair's
  cosine similarity and its target (sentence-transformers' ``CosineSimilarityLoss``);
* ``supcon``: supervised contrastive loss (Khosla et al., 2020) at ``temperature`` over
  each batch seen twice (dropout makes the two views differ), so every example has a positive.

Evaluation embeds the split; :meth:`FewShotClassificationTask.compute_metrics` embeds the
training examples with the same model (a reference kept by ``evaluation_step``), fits the
``head`` on them (``prototype``: nearest normalised class mean; ``logistic``: scikit-learn
logistic regression with ``C = logistic_c``) and scores the split. The last fitted head is
saved in the exported model's ``task_state.json``, so ``tuneforge evaluate``/``predict`` use
it without the training data. ``training.max_steps: 0`` evaluates the frozen encoder.

The losses, pairs and heads are :mod:`tuneforge.contrastive`'s (re-exported here), the same
that ``tuneforge meta`` uses with ``meta.eval.adaptation: contrastive``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from tuneforge import hookimpl
from tuneforge.contrastive import LinearHead, contrastive_pairs, pair_loss, pool, supcon_loss
from tuneforge.data import make_loader, pad_features
from tuneforge.errors import ConfigError
from tuneforge.evaluation import collect_outputs
from tuneforge.plugins.classification import ClassificationOptions, ClassificationTask, label_metrics

__all__ = ["FewShotClassificationTask", "FewShotOptions", "LinearHead", "contrastive_pairs", "pair_loss", "pool",
           "supcon_loss"]  # the losses and heads live in tuneforge.contrastive (shared with `tuneforge meta`)

PAIR_KEYS = ("pair_input_ids", "pair_attention_mask")


class FewShotOptions(ClassificationOptions):
    loss: Literal["pairs", "supcon"] = Field("pairs", description=(
        "Contrastive loss: pairs (SetFit: cosine similarity of same/different-label pairs) or supcon "
        "(supervised contrastive loss over each batch)."))
    pairs_per_example: int = Field(20, ge=1, description=(
        "loss=pairs: rounds of pair generation; each makes one positive and one negative pair per example "
        "(SetFit's num_iterations)."))
    temperature: float = Field(0.07, gt=0, description="loss=supcon: temperature of the similarities.")
    head: Literal["prototype", "logistic"] = Field("logistic", description=(
        "Classifier fitted on the training embeddings at evaluation: prototype (nearest class mean) or logistic "
        "regression."))
    logistic_c: float = Field(1.0, gt=0, description="head=logistic: inverse regularisation strength C.")
    pooling: Literal["mean", "cls"] = Field("mean", description="Sentence embedding: mean of tokens or [CLS].")


class FewShotClassificationTask(ClassificationTask):
    name = "fewshot_classification"
    Options = FewShotOptions
    metric_names = ("accuracy", "macro_f1", "micro_f1")
    options: FewShotOptions

    def __init__(self, options: Any, config: Any) -> None:
        super().__init__(options, config)
        if self.options.text_pair_field:
            raise ConfigError("task.text_pair_field: task 'fewshot_classification' embeds single texts; remove it "
                              "(or use task.name: classification)")
        self.train_features: list[dict[str, Any]] | None = None  # the training examples, embedded at evaluation
        self.head: LinearHead | None = None
        self._model: torch.nn.Module | None = None
        self._tokenizer: Any = None

    # -- model and features ------------------------------------------------------------------

    def build_model(self, tokenizer: Any) -> torch.nn.Module:
        from transformers import AutoModel

        return AutoModel.from_pretrained(self.model_path(), **self.pretrained_kwargs())

    def encode(self, records: list[dict[str, Any]], tokenizer: Any, split: str) -> list[dict[str, Any]]:
        """Single examples; for ``train`` with ``loss: pairs`` the pairs (the single training
        examples are kept for fitting the head)."""
        singles = [{k: f[k] for k in ("input_ids", "attention_mask", "labels") if k in f}
                   for f in super().encode(records, tokenizer, split)]
        if split != "train":
            return singles
        self.train_features, self._tokenizer = singles, tokenizer
        if self.options.loss != "pairs":
            return singles
        pairs = contrastive_pairs([f["labels"] for f in singles], self.options.pairs_per_example,
                                  self.config.training.seed)
        return [{"input_ids": singles[i]["input_ids"], "attention_mask": singles[i]["attention_mask"],
                 "pair_input_ids": singles[j]["input_ids"], "pair_attention_mask": singles[j]["attention_mask"],
                 "pair_label": target} for i, j, target in pairs]

    def collate(self, features: list[dict[str, Any]], tokenizer: Any) -> dict[str, torch.Tensor]:
        """Singles as they are; pairs as ``2B`` padded rows (first sides, then second sides) and ``pair_label``."""
        pad_id = tokenizer.pad_token_id or 0
        if PAIR_KEYS[0] not in features[0]:
            return pad_features(features, pad_id)
        sides = [{"input_ids": f["input_ids"], "attention_mask": f["attention_mask"]} for f in features]
        sides += [{"input_ids": f[PAIR_KEYS[0]], "attention_mask": f[PAIR_KEYS[1]]} for f in features]
        batch = pad_features(sides, pad_id)
        batch["pair_label"] = torch.tensor([f["pair_label"] for f in features], dtype=torch.float)
        return batch

    def embed(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return pool(hidden.float(), batch["attention_mask"], self.options.pooling)

    # -- training ---------------------------------------------------------------------------

    def training_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "pair_label" in batch:
            first, second = self.embed(model, batch).chunk(2)
            return pair_loss(first, second, batch["pair_label"])
        twice = {k: torch.cat([v, v]) for k, v in batch.items()}  # two dropout views of each example
        return supcon_loss(self.embed(model, twice), twice["labels"], self.options.temperature)

    # -- evaluation -------------------------------------------------------------------------

    def evaluation_step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self._model = model  # compute_metrics embeds the training examples with this model
        out = {"embeddings": F.normalize(self.embed(model, batch), dim=-1)}
        if "labels" in batch:
            out["labels"] = batch["labels"]
        return out

    def fit_head(self) -> LinearHead:
        """The head fitted on the training examples embedded by the model of the last
        ``evaluation_step``; without training data (a reloaded model) the saved head."""
        if self.train_features is None or self._model is None:
            if self.head is None:
                raise ConfigError("task 'fewshot_classification' has no fitted head: evaluate a model exported by "
                                  "`tuneforge train` with this task (its task_state.json holds the head)")
            return self.head
        device = next(self._model.parameters()).device
        loader = make_loader(self.train_features, self.config.eval_batch_size(),
                             lambda feats: self.collate(feats, self._tokenizer), shuffle=False)
        train = collect_outputs(self._model, self, loader, device=device)
        self.head = LinearHead.fit(self.options.head, train["embeddings"], train["labels"], self.options.logistic_c)
        return self.head

    def _classified(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``outputs`` with ``predictions`` and ``confidence`` from the head (fitted once per split)."""
        if "predictions" not in outputs:
            outputs["predictions"], outputs["confidence"] = self.fit_head().predict(outputs["embeddings"])
        return outputs

    def compute_metrics(self, outputs: dict[str, np.ndarray], split: str, features: list[dict[str, Any]]) -> dict[str, float]:
        outputs = self._classified(outputs)
        return label_metrics(outputs["predictions"], outputs["labels"])

    def metric_inputs(self, outputs: dict[str, np.ndarray], features: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
        return super().metric_inputs(self._classified(outputs), features)

    def predictions(self, outputs: dict[str, np.ndarray], features: list[dict[str, Any]], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return super().predictions(self._classified(outputs), features, records)

    def write_reports(self, outputs: dict[str, np.ndarray], split: str, features: list[dict[str, Any]], directory: Any) -> None:
        super().write_reports(self._classified(outputs), split, features, directory)

    # -- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.head is not None:
            state["head"] = self.head.to_json()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.head = LinearHead.from_json(state["head"]) if state.get("head") else None


@hookimpl
def tf_register_tasks(register: Any) -> None:
    register("fewshot_classification", FewShotClassificationTask)
