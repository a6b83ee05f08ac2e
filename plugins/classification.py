"""Text classification (single text or text pair), with accuracy, macro/micro F1
and a per-class report."""

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
from tuneforge.tasks import LabelVocabTask, TaskOptions

log = logging.getLogger(__name__)


class ClassificationOptions(TaskOptions):
    text_field: str = Field("text", description="Field holding the text.")
    text_pair_field: str | None = Field(None, description="Field holding the second text of a pair.")
    label_field: str = Field("label", description="Field holding the label.")
    labels: list[str] | None = Field(None, description="Label names in id order; default: sorted training labels.")


def label_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(labels, predictions, average="micro", zero_division=0)),
    }


class ClassificationTask(LabelVocabTask):
    name = "classification"
    Options = ClassificationOptions
    primary_metric = "accuracy"
    greater_is_better = True
    metric_names = ("accuracy", "macro_f1", "micro_f1", "loss")
    options: ClassificationOptions

    # -- labels -------------------------------------------------------------------

    def prepare(self, train_records: list[dict[str, Any]]) -> None:
        o = self.options
        fields = [o.text_field, o.label_field] + ([o.text_pair_field] if o.text_pair_field else [])
        require_fields(train_records, fields, self.config.data.train or "train split")
        super().prepare(train_records)

    def vocab_values(self, train_records: list[dict[str, Any]]) -> Iterable[str]:
        return (str(r[self.options.label_field]) for r in train_records)

    # -- model and features ------------------------------------------------------------

    def build_model(self, tokenizer: Any) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(
            self.model_path(), **self.label_config(), **self.pretrained_kwargs()
        )

    def encode(self, records: list[dict[str, Any]], tokenizer: Any, split: str) -> list[dict[str, Any]]:
        o = self.options
        source = getattr(self.config.data, split, None) or f"{split} split"
        has_labels = split != "predict"
        fields = [o.text_field] + ([o.text_pair_field] if o.text_pair_field else [])
        require_fields(records, fields + ([o.label_field] if has_labels else []), source)
        index = self.label_ids()
        texts = [str(r[o.text_field]) for r in records]
        pairs = [str(r[o.text_pair_field]) for r in records] if o.text_pair_field else None
        max_length = self.config.data.max_length
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        truncated = sum(len(ids) >= max_length for ids in enc["input_ids"])
        if truncated:
            log.info("%s: %d of %d examples truncated to %d tokens", split, truncated, len(records), max_length)
        features = []
        for i, rec in enumerate(records):
            feat = {k: enc[k][i] for k in enc}
            if has_labels:
                label = str(rec[o.label_field])
                self.check_known(label, record_origin(rec, source, i))
                feat["labels"] = index[label]
            features.append(feat)
        return features

    # -- evaluation -----------------------------------------------------------------------

    def evaluation_step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return self.label_outputs(model(**inputs).logits, batch.get("labels"))

    def compute_metrics(self, outputs: dict[str, np.ndarray], split: str, features: list[dict[str, Any]]) -> dict[str, float]:
        return label_metrics(outputs["predictions"], outputs["labels"])

    def metric_inputs(self, outputs: dict[str, np.ndarray], features: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
        """Predicted and gold label names."""
        return [self.labels[int(p)] for p in outputs["predictions"]], [self.labels[int(y)] for y in outputs["labels"]]

    def predictions(self, outputs: dict[str, np.ndarray], features: list[dict[str, Any]], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {"label": self.labels[int(p)], "confidence": round(float(c), 6)}
            for p, c in zip(outputs["predictions"], outputs["confidence"])
        ]

    def write_reports(self, outputs: dict[str, np.ndarray], split: str, features: list[dict[str, Any]], directory: Path) -> None:
        from sklearn.metrics import classification_report, confusion_matrix

        ids = list(range(len(self.labels)))
        y, p = outputs["labels"], outputs["predictions"]
        text = classification_report(y, p, labels=ids, target_names=self.labels, zero_division=0, digits=4)
        report = classification_report(y, p, labels=ids, target_names=self.labels, zero_division=0, output_dict=True)
        out = directory / "reports"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{split}_classification_report.txt").write_text(text, encoding="utf-8")
        payload = {"labels": self.labels, "report": report, "confusion_matrix": confusion_matrix(y, p, labels=ids).tolist()}
        (out / f"{split}_classification_report.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")


@hookimpl
def tf_register_tasks(register: Any) -> None:
    register("classification", ClassificationTask)


# sklearn is imported on first use, not at registration: it costs ~140 MiB RSS and seconds
# of import time in every run and `tuneforge validate`, evaluation or not.
def _accuracy(predictions: np.ndarray, references: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(references, predictions))


def _f1(average: str) -> Any:
    def f1(predictions: np.ndarray, references: np.ndarray) -> float:
        from sklearn.metrics import f1_score

        return float(f1_score(references, predictions, average=average, zero_division=0))

    return f1


def _matthews(predictions: np.ndarray, references: np.ndarray) -> float:
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(references, predictions))


@hookimpl
def tf_register_metrics(register: Any) -> None:
    """Metrics over label sequences, usable by any task's ``metric_inputs`` via ``evaluation.extra_metrics``."""
    register("accuracy", _accuracy)
    register("macro_f1", _f1("macro"))
    register("micro_f1", _f1("micro"))
    register("weighted_f1", _f1("weighted"))
    register("matthews", _matthews)
