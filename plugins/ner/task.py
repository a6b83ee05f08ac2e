"""The ``ner`` task: token classification with entity-level seqeval metrics (see the package docstring)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneforge.errors import ConfigError, DataError
from tuneforge.plugins.ner.readers import NEROptions, read_ner_file
from tuneforge.plugins.ner.tags import SCHEME_PREFIXES, entity_type, iob2_to_bioes
from tuneforge.tasks import LabelVocabTask
from tuneforge.text import IGNORE_INDEX, first_subtoken_labels, window_owners, word_windows

log = logging.getLogger(__name__)


class NERTask(LabelVocabTask):
    name = "ner"
    Options = NEROptions
    primary_metric = "f1"
    metric_names = ("precision", "recall", "f1", "f1_*", "accuracy", "loss")
    greater_is_better = True
    metadata_keys = frozenset({"sentence", "word_index", "gold", "tokens"})
    options: NEROptions
    vocab_field = "entity_types"
    vocab_noun = "entity type"
    min_vocab = 1

    @property
    def entity_types(self) -> list[str]:
        """The vocabulary: entity types in label order."""
        return self.vocab

    @entity_types.setter
    def entity_types(self, types: list[str]) -> None:
        self.vocab = list(types)

    @property
    def labels(self) -> list[str]:
        prefixes = SCHEME_PREFIXES[self.options.label_scheme]
        return ["O"] + [f"{p}-{t}" for t in self.entity_types for p in prefixes]

    def to_label_scheme(self, iob2: list[str]) -> list[str]:
        return iob2_to_bioes(iob2) if self.options.label_scheme == "bioes" else iob2

    # -- data ---------------------------------------------------------------------------

    def read(self, path: str, split: str) -> list[dict[str, Any]]:
        return read_ner_file(path, self.options, self.config.data.format, with_tags=split != "predict")

    def vocab_values(self, train_records: list[dict[str, Any]]) -> Iterable[str]:
        return (entity_type(t) for r in train_records for t in r["tags"] if t != "O")

    def prepare(self, train_records: list[dict[str, Any]]) -> None:
        super().prepare(train_records)
        self.check_types(train_records)

    def check_types(self, records: list[dict[str, Any]]) -> None:
        """Fail on the first tag whose entity type the model has no label for."""
        for r in records:
            for tag, line in zip(r["tags"], r["lines"]):
                if tag != "O":
                    self.check_known(entity_type(tag), f"{r['source']}, line {line}: tag '{tag}'")

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "label_scheme": self.options.label_scheme, "labels": self.labels}

    # -- model and features ---------------------------------------------------------------

    def build_model(self, tokenizer: Any) -> torch.nn.Module:
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification.from_pretrained(
            self.model_path(), **self.label_config(), **self.pretrained_kwargs()
        )

    def encode(self, records: list[dict[str, Any]], tokenizer: Any, split: str) -> list[dict[str, Any]]:
        has_tags = split != "predict"
        if has_tags:
            self.check_types(records)
        max_length = self.config.data.max_length
        budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
        if not 0 <= self.options.stride < budget:
            raise ConfigError(
                f"task.stride ({self.options.stride}) must be smaller than data.max_length ({max_length}) "
                f"minus the tokenizer's {max_length - budget} special tokens"
            )
        # Sub-tokens per word; words the tokenizer drops entirely (e.g. lone control characters)
        # become the unknown token so that they still get a prediction.
        words = [list(r["tokens"]) for r in records]
        probe = tokenizer(words, is_split_into_words=True, add_special_tokens=False)
        counts: list[list[int]] = []
        replaced = 0
        for i, ws in enumerate(words):
            c = [0] * len(ws)
            for wid in probe.word_ids(i):
                if wid is not None:
                    c[wid] += 1
            for j, n in enumerate(c):
                if n == 0:
                    ws[j], c[j] = tokenizer.unk_token, 1
                    replaced += 1
            counts.append(c)
        if replaced:
            log.info("%s: %d tokens produce no sub-token; encoded as %s", split, replaced, tokenizer.unk_token)

        index = self.label_ids()
        inputs: list[list[str]] = []
        meta: list[tuple[int, int, int, list[int], int]] = []  # sentence, words [start, end), owners, window
        split_sentences = 0
        for i, c in enumerate(counts):
            windows = word_windows(c, budget, self.options.stride)
            owners = window_owners(windows, len(c))
            split_sentences += len(windows) > 1
            for k, (start, end) in enumerate(windows):
                inputs.append(words[i][start:end])
                meta.append((i, start, end, owners, k))
        enc = tokenizer(inputs, is_split_into_words=True, truncation=True, max_length=max_length)

        golds = [self.to_label_scheme(r["tags"]) for r in records] if has_tags else None
        features: list[dict[str, Any]] = []
        covered = [0] * len(records)
        truncated = 0
        for f, (i, start, end, owners, k) in enumerate(meta):
            word_ids = [None if w is None else start + w for w in enc.word_ids(f)]
            word_index = []
            previous = None
            for w in word_ids:
                word_index.append(w if w is not None and w != previous and owners[w] == k else -1)
                previous = w
            covered[i] += sum(w >= 0 for w in word_index)
            truncated += sum(counts[i][start:end]) > budget
            feat = {key: enc[key][f] for key in enc}
            feat.update(sentence=i, word_index=word_index, tokens=records[i]["tokens"])
            if golds is not None:
                ids = [index[t] for t in golds[i]]
                feat["labels"] = first_subtoken_labels(word_ids, ids, IGNORE_INDEX)
                feat["gold"] = golds[i]
            features.append(feat)
        for i, n in enumerate(covered):
            if n != len(words[i]):
                r = records[i]
                raise DataError(
                    f"{r.get('source', split)}, line {r['lines'][0]}: {len(words[i]) - n} of {len(words[i])} tokens "
                    "of this sentence lost their first sub-token when windowed; the tokenizer splits words "
                    "differently in context (set data.max_length higher)"
                )
        log.info(
            "%s: %d sentences -> %d features (%d sentences split into windows of <= %d tokens, stride %d; "
            "%d windows with a word longer than the window, truncated after its first sub-token)",
            split, len(records), len(features), split_sentences, max_length, self.options.stride, truncated,
        )
        return features

    # -- evaluation -----------------------------------------------------------------------

    def evaluation_step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        labels = batch.get("labels")
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        out = {"predictions": logits.argmax(-1)}
        if labels is not None:
            token_loss = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), labels, reduction="none", ignore_index=IGNORE_INDEX
            )
            mask = labels != IGNORE_INDEX
            out["loss"] = (token_loss * mask).sum(1) / mask.sum(1).clamp(min=1)
        return out

    def merge_predictions(self, predictions: np.ndarray, features: list[dict[str, Any]]) -> list[list[str]]:
        """Predicted tags per sentence (one per input token), taking each word from its owner window."""
        labels = self.labels
        sentences: dict[int, list[str | None]] = {}
        for f, feat in enumerate(features):
            tags = sentences.setdefault(feat["sentence"], [None] * len(feat["tokens"]))
            row = predictions[f]
            for pos, w in enumerate(feat["word_index"]):
                if w >= 0:
                    tags[w] = labels[int(row[pos])]
        out: list[list[str]] = []
        for i in range(len(sentences)):
            done = [t for t in sentences[i] if t is not None]
            if len(done) != len(sentences[i]):
                raise RuntimeError(f"sentence {i}: tokens without a prediction (features out of order?)")
            out.append(done)
        return out

    def _seqeval_kwargs(self) -> dict[str, Any]:
        if self.options.seqeval_mode == "conlleval":
            return {}
        from seqeval.scheme import IOB2, IOBES

        return {"mode": "strict", "scheme": IOBES if self.options.label_scheme == "bioes" else IOB2}

    def scores(self, gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
        """Entity-level micro precision/recall/F1, per-type F1 and token accuracy."""
        from seqeval.metrics import classification_report

        report = classification_report(gold, predicted, output_dict=True, zero_division=0, **self._seqeval_kwargs())
        micro = report["micro avg"]
        metrics = {"precision": float(micro["precision"]), "recall": float(micro["recall"]),
                   "f1": float(micro["f1-score"])}
        for t in self.entity_types:
            metrics[f"f1_{t}"] = float(report[t]["f1-score"]) if t in report else 0.0
        flat = [(g, p) for gs, ps in zip(gold, predicted) for g, p in zip(gs, ps)]
        metrics["accuracy"] = sum(g == p for g, p in flat) / max(1, len(flat))
        return metrics

    def _gold(self, features: list[dict[str, Any]]) -> list[list[str]]:
        gold: dict[int, list[str]] = {}
        for feat in features:
            gold.setdefault(feat["sentence"], feat["gold"])
        return [gold[i] for i in range(len(gold))]

    def compute_metrics(self, outputs: dict[str, np.ndarray], split: str, features: list[dict[str, Any]]) -> dict[str, float]:
        return self.scores(self._gold(features), self.merge_predictions(outputs["predictions"], features))

    def metric_inputs(self, outputs: dict[str, np.ndarray], features: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
        """Predicted and gold IOB2 tag sequences, one per sentence."""
        return self.merge_predictions(outputs["predictions"], features), self._gold(features)

    def predictions(self, outputs: dict[str, np.ndarray], features: list[dict[str, Any]], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        tags = self.merge_predictions(outputs["predictions"], features)
        return [{"tokens": list(r["tokens"]), "tags": t} for r, t in zip(records, tags)]

    def write_reports(self, outputs: dict[str, np.ndarray], split: str, features: list[dict[str, Any]], directory: Path) -> None:
        from seqeval.metrics import classification_report

        gold, predicted = self._gold(features), self.merge_predictions(outputs["predictions"], features)
        kwargs = self._seqeval_kwargs()
        out = directory / "reports"
        out.mkdir(parents=True, exist_ok=True)
        text = classification_report(gold, predicted, digits=4, zero_division=0, **kwargs)
        (out / f"{split}_seqeval_report.txt").write_text(text, encoding="utf-8")
        report = classification_report(gold, predicted, output_dict=True, zero_division=0, **kwargs)
        payload = {
            "mode": self.options.seqeval_mode,
            "label_scheme": self.options.label_scheme,
            "report": {k: {m: float(v) for m, v in row.items()} for k, row in report.items()},
        }
        (out / f"{split}_seqeval_report.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
        tokens: dict[int, list[str]] = {f["sentence"]: f["tokens"] for f in features}
        with (out / f"{split}_predictions.conll").open("w", encoding="utf-8") as fh:
            for i, (g, p) in enumerate(zip(gold, predicted)):
                fh.writelines(f"{tok}\t{gt}\t{pt}\n" for tok, gt, pt in zip(tokens[i], g, p))
                fh.write("\n")
