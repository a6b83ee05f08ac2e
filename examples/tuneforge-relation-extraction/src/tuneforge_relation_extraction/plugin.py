"""Relation extraction by entity-marker classification.

Each record names a head and a tail span in a tokenized sentence::

    {"tokens": ["Ada", "works", "for", "Acme", "."], "head": [0, 1], "tail": [3, 4], "relation": "works_for"}

The spans are token offsets, end exclusive. Markers are put around them
(``[E1] Ada [/E1] works for [E2] Acme [/E2] .``), added to the tokenizer as special
tokens (the embedding matrix grows to match), and a sequence classifier predicts the
relation. The metric is micro-F1 over the real relations: predicting or missing the
no-relation label earns nothing, so a model that always says "no_relation" scores 0.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from tuneforge import hookimpl
from tuneforge.data import record_origin, require_fields
from tuneforge.errors import DataError
from tuneforge.tasks import LabelVocabTask, TaskOptions

log = logging.getLogger(__name__)


class RelationExtractionOptions(TaskOptions):
    tokens_field: str = Field("tokens", description="Field holding the sentence as a list of tokens.")
    head_field: str = Field("head", description="Field holding the head span [start, end) in tokens.")
    tail_field: str = Field("tail", description="Field holding the tail span [start, end) in tokens.")
    label_field: str = Field("relation", description="Field holding the relation label.")
    no_relation: str = Field("no_relation", description="The label meaning 'no relation' (left out of micro-F1).")
    labels: list[str] | None = Field(None, description="Relation labels in id order; default: sorted training labels.")
    markers: tuple[str, str, str, str] = Field(
        ("[E1]", "[/E1]", "[E2]", "[/E2]"), description="Head start/end and tail start/end marker tokens."
    )


def relation_micro_f1(predictions: np.ndarray, labels: np.ndarray, no_relation_id: int | None) -> dict[str, float]:
    """Micro precision/recall/F1 over the relations other than ``no_relation_id``."""
    p, g = np.asarray(predictions), np.asarray(labels)
    positive_pred = p != no_relation_id if no_relation_id is not None else np.ones_like(p, dtype=bool)
    positive_gold = g != no_relation_id if no_relation_id is not None else np.ones_like(g, dtype=bool)
    tp = float(np.sum((p == g) & positive_gold))
    precision = tp / positive_pred.sum() if positive_pred.sum() else 0.0
    recall = tp / positive_gold.sum() if positive_gold.sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"micro_f1": f1, "precision": precision, "recall": recall, "accuracy": float(np.mean(p == g)) if len(p) else 0.0}


def insert_markers(tokens: list[str], head: tuple[int, int], tail: tuple[int, int], markers: tuple[str, ...]) -> list[str]:
    """``tokens`` with the four markers around the head and tail spans (end exclusive)."""
    inserts = [(head[0], 0, markers[0]), (head[1], 1, markers[1]), (tail[0], 0, markers[2]), (tail[1], 1, markers[3])]
    out = list(tokens)
    # right to left so earlier offsets stay valid; at one position an end marker goes before a start marker
    for pos, _kind, marker in sorted(inserts, key=lambda x: (x[0], -x[1]), reverse=True):
        out.insert(pos, marker)
    return out


class RelationExtractionTask(LabelVocabTask):
    name = "relation_extraction"
    Options = RelationExtractionOptions
    primary_metric = "micro_f1"
    greater_is_better = True
    options: RelationExtractionOptions
    vocab_noun = "relation"

    # -- labels (learned from train, saved beside the model by LabelVocabTask) -------------

    def prepare(self, train_records: list[dict[str, Any]]) -> None:
        o = self.options
        source = self.config.data.train or "train split"
        require_fields(train_records, [o.tokens_field, o.head_field, o.tail_field, o.label_field], source)
        super().prepare(train_records)

    def vocab_values(self, train_records: list[dict[str, Any]]) -> Iterable[str]:
        return (str(r[self.options.label_field]) for r in train_records)

    @property
    def no_relation_id(self) -> int | None:
        return self.labels.index(self.options.no_relation) if self.options.no_relation in self.labels else None

    # -- tokenizer and model ----------------------------------------------------------------

    def load_tokenizer(self) -> Any:
        tokenizer = super().load_tokenizer()
        added = tokenizer.add_tokens(list(self.options.markers), special_tokens=True)
        if added:
            log.info("added %d entity marker tokens %s to the tokenizer", added, list(self.options.markers))
        return tokenizer

    def build_model(self, tokenizer: Any) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(
            self.model_path(), **self.label_config(), **self.pretrained_kwargs()
        )
        if len(tokenizer) != model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))  # rows for the marker tokens
        return model

    # -- features -----------------------------------------------------------------------------

    def _span(self, record: dict[str, Any], field: str, n_tokens: int, where: str) -> tuple[int, int]:
        span = record[field]
        if isinstance(span, dict):
            span = [span.get("start"), span.get("end")]
        if not (isinstance(span, list | tuple) and len(span) == 2 and all(isinstance(x, int) for x in span)):
            raise DataError(f"{where}: field '{field}' must be a [start, end) pair of token offsets, got {span!r}")
        start, end = span
        if not 0 <= start < end <= n_tokens:
            raise DataError(f"{where}: field '{field}' span {list(span)} is outside the {n_tokens} tokens or empty")
        return start, end

    def encode(self, records: list[dict[str, Any]], tokenizer: Any, split: str) -> list[dict[str, Any]]:
        o = self.options
        source = getattr(self.config.data, split, None) or f"{split} split"
        has_labels = split != "predict"
        fields = [o.tokens_field, o.head_field, o.tail_field] + ([o.label_field] if has_labels else [])
        require_fields(records, fields, source)
        index = self.label_ids()
        marker_ids = set(tokenizer.convert_tokens_to_ids(list(o.markers)))
        max_length = self.config.data.max_length
        features, cropped, lost = [], 0, 0
        for i, rec in enumerate(records):
            where = record_origin(rec, source, i)
            tokens = rec[o.tokens_field]
            if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
                raise DataError(f"{where}: field '{o.tokens_field}' must be a list of strings")
            head = self._span(rec, o.head_field, len(tokens), where)
            tail = self._span(rec, o.tail_field, len(tokens), where)
            if head[0] < tail[1] and tail[0] < head[1]:
                raise DataError(f"{where}: head {list(head)} and tail {list(tail)} overlap")
            enc, was_cropped = self._encode_window(tokens, head, tail, tokenizer, max_length, marker_ids)
            cropped += was_cropped
            lost += not marker_ids <= set(enc["input_ids"])
            feat = dict(enc)
            if has_labels:
                label = str(rec[o.label_field])
                self.check_known(label, f"{where}: field '{o.label_field}'")
                feat["labels"] = index[label]
            features.append(feat)
        if cropped:
            log.info("%s: %d of %d sentences cropped around their entities to fit %d tokens",
                     split, cropped, len(records), max_length)
        if lost:
            log.warning("%s: in %d of %d examples the entities alone exceed data.max_length=%d; markers were cut",
                        split, lost, len(records), max_length)
        return features

    def _encode_window(self, tokens: list[str], head: tuple[int, int], tail: tuple[int, int], tokenizer: Any,
                       max_length: int, marker_ids: set[int]) -> tuple[dict[str, Any], bool]:
        """Encode with markers; if a marker falls off the end, crop a word window around both
        entities, halving the context until all four markers fit."""
        markers = self.options.markers
        enc = tokenizer(insert_markers(tokens, head, tail, markers), is_split_into_words=True, truncation=True,
                        max_length=max_length)
        if marker_ids <= set(enc["input_ids"]):
            return dict(enc), False
        lo, hi = min(head[0], tail[0]), max(head[1], tail[1])
        context = max(lo, len(tokens) - hi)
        while True:
            context //= 2
            start, end = max(0, lo - context), min(len(tokens), hi + context)
            h, t = (head[0] - start, head[1] - start), (tail[0] - start, tail[1] - start)
            enc = tokenizer(insert_markers(tokens[start:end], h, t, markers), is_split_into_words=True,
                            truncation=True, max_length=max_length)
            if marker_ids <= set(enc["input_ids"]) or context == 0:
                return dict(enc), True

    # -- evaluation -----------------------------------------------------------------------------

    def evaluation_step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return self.label_outputs(model(**inputs).logits, batch.get("labels"))

    def compute_metrics(self, outputs: dict[str, np.ndarray], split: str, features: list[dict[str, Any]]) -> dict[str, float]:
        return relation_micro_f1(outputs["predictions"], outputs["labels"], self.no_relation_id)

    def predictions(self, outputs: dict[str, np.ndarray], features: list[dict[str, Any]], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"relation": self.labels[int(p)], "confidence": round(float(c), 6)}
                for p, c in zip(outputs["predictions"], outputs["confidence"])]

    def write_reports(self, outputs: dict[str, np.ndarray], split: str, features: list[dict[str, Any]], directory: Path) -> None:
        p, g = outputs["predictions"], outputs["labels"]
        per_relation = {}
        for i, name in enumerate(self.labels):
            if i == self.no_relation_id:
                continue
            tp, n_pred, n_gold = int(np.sum((p == i) & (g == i))), int(np.sum(p == i)), int(np.sum(g == i))
            prec, rec = (tp / n_pred if n_pred else 0.0), (tp / n_gold if n_gold else 0.0)
            f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
            per_relation[name] = {"precision": prec, "recall": rec, "f1": f1, "support": n_gold}
        report = {"micro": relation_micro_f1(p, g, self.no_relation_id), "per_relation": per_relation,
                  "no_relation_label": self.options.no_relation}
        out = directory / "reports"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{split}_relation_report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")


@hookimpl
def tf_register_tasks(register: Any) -> None:
    register("relation_extraction", RelationExtractionTask)
