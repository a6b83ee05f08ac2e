"""Extractive question answering (SQuAD v1.1 and v2) with the official EM/F1.

Data: SQuAD JSON (``{"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}``)
or jsonl records with ``id``, ``question``, ``context`` and ``answers`` (a list of
``{"text", "answer_start"}`` or the Hugging Face ``{"text": [...], "answer_start": [...]}``).
SQuAD v2 questions marked ``is_impossible`` (or with no answers) are unanswerable.

Long contexts are split into windows of ``data.max_length`` tokens overlapping by
``task.doc_stride``; a window that does not hold the answer is trained to point at the
[CLS] token. At evaluation the n-best start/end pairs of every window of a question
are scored together and the best span (or, for v2, the null answer) is kept.

``task.dev_fraction``/``test_fraction`` split one file by article (seeded by
``task.split_seed``) for data sets that come as a single file, such as XQuAD.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from tuneforge import hookimpl
from tuneforge.errors import ConfigError, DataError
from tuneforge.squad import ArticleSplitOptions, check_article_split, read_split
from tuneforge.squad import read_squad as read_squad  # re-exported: tuneforge.plugins.qa kept its names
from tuneforge.squad import split_articles as split_articles
from tuneforge.tasks import Task
from tuneforge.text import char_span_to_token_span, squad_scores
from tuneforge.text import exact_match_score as exact_match_score  # re-exported: the official script's parts
from tuneforge.text import f1_score as f1_score
from tuneforge.text import normalize_answer as normalize_answer

log = logging.getLogger(__name__)


# -- options ------------------------------------------------------------------------------


class QAOptions(ArticleSplitOptions):
    doc_stride: int | None = Field(
        None, ge=0, description="Tokens of context overlap between the windows of a long context; default max_length / 4."
    )
    max_query_length: int = Field(64, ge=1, description="Questions are cut to this many tokens.")
    max_answer_length: int = Field(30, ge=1, description="Longest answer span predicted, in tokens.")
    n_best_size: int = Field(20, ge=1, description="Start and end candidates per window in post-processing.")
    version_2_with_negative: bool | None = Field(
        None, description="Allow the null answer (SQuAD v2); default: on if the training data has unanswerable questions."
    )
    null_score_diff_threshold: float = Field(
        0.0, description="v2: answer null when null score > best span score + this threshold."
    )


# -- the task -------------------------------------------------------------------------------


class QATask(Task):
    name = "qa"
    Options = QAOptions
    primary_metric = "f1"
    metric_names = ("exact_match", "f1", "has_answer_*", "no_answer_*", "loss")
    greater_is_better = True
    metadata_keys = frozenset({"example", "qid", "offsets", "context", "answers", "cls_index"})
    options: QAOptions

    def __init__(self, options: Any, config: Any) -> None:
        super().__init__(options, config)
        o, d = self.options, config.data
        self.doc_stride = o.doc_stride if o.doc_stride is not None else d.max_length // 4
        room = d.max_length - o.max_query_length - 3
        if self.doc_stride >= room:
            raise ConfigError(
                f"task.doc_stride ({self.doc_stride}) must be smaller than data.max_length ({d.max_length}) minus "
                f"task.max_query_length ({o.max_query_length}) minus 3 special tokens = {room}"
            )
        check_article_split(o, d)
        self.allow_null = bool(o.version_2_with_negative)

    # -- data ---------------------------------------------------------------------------

    def read(self, path: str, split: str) -> list[dict[str, Any]]:
        return read_split(path, split, self.options, self.config.data)

    def prepare(self, train_records: list[dict[str, Any]]) -> None:
        if self.options.version_2_with_negative is None:
            self.allow_null = any(not r["answers"] for r in train_records)
        elif not self.allow_null and any(not r["answers"] for r in train_records):
            n = sum(not r["answers"] for r in train_records)
            raise DataError(
                f"{self.config.data.train}: {n} questions have no answer but task.version_2_with_negative is false; "
                "set it to true (SQuAD v2) or remove them"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"version_2_with_negative": self.allow_null}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.allow_null = bool(state["version_2_with_negative"])

    # -- model and features ---------------------------------------------------------------

    def build_model(self, tokenizer: Any) -> torch.nn.Module:
        from transformers import AutoModelForQuestionAnswering

        return AutoModelForQuestionAnswering.from_pretrained(self.model_path(), **self.pretrained_kwargs())

    def _questions(self, records: list[dict[str, Any]], tokenizer: Any) -> list[str]:
        """Questions without leading spaces, cut to ``max_query_length`` tokens."""
        questions = [r["question"].lstrip() for r in records]
        limit = self.options.max_query_length
        enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
        cut = 0
        for i, offsets in enumerate(enc["offset_mapping"]):
            if len(offsets) > limit:
                questions[i] = questions[i][: offsets[limit - 1][1]]
                cut += 1
        if cut:
            log.info("%d questions cut to %d tokens (task.max_query_length)", cut, limit)
        return questions

    def encode(self, records: list[dict[str, Any]], tokenizer: Any, split: str) -> list[dict[str, Any]]:
        if not getattr(tokenizer, "is_fast", True):
            raise ConfigError("the qa task needs a fast tokenizer (offset mappings); this model's is not")
        if split != "predict" and not self.allow_null and any(not r["answers"] for r in records):
            r = next(r for r in records if not r["answers"])
            raise DataError(
                f"{getattr(self.config.data, split, split)}: question '{r['id']}' has no answer, but the model was "
                "not trained for unanswerable questions; set task.version_2_with_negative: true"
            )
        pad_right = tokenizer.padding_side == "right"
        questions = self._questions(records, tokenizer)
        contexts = [r["context"] for r in records]
        enc = tokenizer(
            questions if pad_right else contexts,
            contexts if pad_right else questions,
            truncation="only_second" if pad_right else "only_first",
            max_length=self.config.data.max_length,
            stride=self.doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        context_index = 1 if pad_right else 0
        model_keys = [k for k in enc if k not in ("offset_mapping", "overflow_to_sample_mapping")]
        features: list[dict[str, Any]] = []
        outside = 0
        for f, ex in enumerate(enc["overflow_to_sample_mapping"]):
            rec = records[ex]
            seq_ids = enc.sequence_ids(f)
            offsets = [tuple(o) if s == context_index else None for o, s in zip(enc["offset_mapping"][f], seq_ids)]
            ids = enc["input_ids"][f]
            cls_index = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
            feat: dict[str, Any] = {k: enc[k][f] for k in model_keys}
            feat.update(example=ex, qid=rec["id"], offsets=offsets, context=rec["context"],
                        answers=[a["text"] for a in rec["answers"]], cls_index=cls_index)
            if split != "predict":
                span = None
                if rec["answers"]:
                    a = rec["answers"][0]
                    span = char_span_to_token_span(offsets, a["answer_start"], a["answer_start"] + len(a["text"]))
                    outside += span is None
                feat["start_positions"], feat["end_positions"] = span or (cls_index, cls_index)
            features.append(feat)
        n_windows = Counter(enc["overflow_to_sample_mapping"])
        log.info(
            "%s: %d questions -> %d features (%d contexts split into windows of %d tokens, stride %d; %d windows "
            "without the answer point at [CLS])", split, len(records), len(features),
            sum(n > 1 for n in n_windows.values()), self.config.data.max_length, self.doc_stride, outside,
        )
        return features

    # -- evaluation ---------------------------------------------------------------------

    def evaluation_step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        starts, ends = batch.get("start_positions"), batch.get("end_positions")
        out = model(**{k: v for k, v in batch.items() if k not in ("start_positions", "end_positions")})
        result = {"start_logits": out.start_logits.float(), "end_logits": out.end_logits.float()}
        if starts is not None and ends is not None:
            ce = torch.nn.functional.cross_entropy
            result["loss"] = (ce(result["start_logits"], starts, reduction="none")
                              + ce(result["end_logits"], ends, reduction="none")) / 2
        return result

    def postprocess(self, outputs: dict[str, np.ndarray], features: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Best answer per question id over all its windows: ``{"text", "score", "null_score", "nbest"}``."""
        o = self.options
        by_example: dict[int, list[int]] = defaultdict(list)
        for f, feat in enumerate(features):
            by_example[feat["example"]].append(f)
        results: dict[str, dict[str, Any]] = {}
        for ex in sorted(by_example):
            feats = by_example[ex]
            context = features[feats[0]]["context"]
            null_score = None
            candidates: dict[tuple[int, int], float] = {}
            for f in feats:
                offsets = features[f]["offsets"]
                start_logits = outputs["start_logits"][f][: len(offsets)]
                end_logits = outputs["end_logits"][f][: len(offsets)]
                cls = features[f]["cls_index"]
                null = float(start_logits[cls] + end_logits[cls])
                null_score = null if null_score is None else min(null_score, null)
                top_starts = np.argsort(start_logits)[::-1][: o.n_best_size]
                top_ends = np.argsort(end_logits)[::-1][: o.n_best_size]
                for s in top_starts:
                    if offsets[s] is None:
                        continue
                    for e in top_ends:
                        if offsets[e] is None or e < s or e - s + 1 > o.max_answer_length:
                            continue
                        span = (offsets[s][0], offsets[e][1])
                        score = float(start_logits[s] + end_logits[e])
                        if score > candidates.get(span, -np.inf):
                            candidates[span] = score
            ranked = sorted(candidates.items(), key=lambda kv: -kv[1])[: o.n_best_size]
            nbest = [{"text": context[a:b], "score": score} for (a, b), score in ranked]
            if self.allow_null:
                nbest.append({"text": "", "score": null_score})
                nbest.sort(key=lambda x: -x["score"])
            if nbest:
                scores = np.array([x["score"] for x in nbest])
                probs = np.exp(scores - scores.max())
                for x, p in zip(nbest, probs / probs.sum()):
                    x["probability"] = float(p)
            best = ranked[0] if ranked else None
            text, score = (context[best[0][0] : best[0][1]], best[1]) if best else ("", -np.inf)
            if self.allow_null and (best is None or null_score > score + o.null_score_diff_threshold):  # type: ignore[operator]
                text = ""
            results[features[feats[0]]["qid"]] = {"text": text, "score": score, "null_score": null_score, "nbest": nbest}
        return results

    def _gold(self, features: list[dict[str, Any]]) -> dict[str, list[str]]:
        return {f["qid"]: f["answers"] for f in features}

    def compute_metrics(self, outputs: dict[str, np.ndarray], split: str, features: list[dict[str, Any]]) -> dict[str, float]:
        answers = {q: r["text"] for q, r in self.postprocess(outputs, features).items()}
        return squad_scores(answers, self._gold(features))

    def metric_inputs(self, outputs: dict[str, np.ndarray], features: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
        """Predicted answer texts and the gold answer lists, one per question."""
        best, gold = self.postprocess(outputs, features), self._gold(features)
        return [best[q]["text"] for q in gold], list(gold.values())

    def predictions(self, outputs: dict[str, np.ndarray], features: list[dict[str, Any]], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        best = self.postprocess(outputs, features)
        return [{"id": r["id"], "answer": best[r["id"]]["text"], "score": best[r["id"]]["score"]} for r in records]

    def write_reports(self, outputs: dict[str, np.ndarray], split: str, features: list[dict[str, Any]], directory: Path) -> None:
        best = self.postprocess(outputs, features)
        out = directory / "reports"
        out.mkdir(parents=True, exist_ok=True)
        answers = {q: r["text"] for q, r in best.items()}
        (out / f"{split}_predictions.json").write_text(json.dumps(answers, indent=2, ensure_ascii=False), encoding="utf-8")
        nbest = {q: r["nbest"][:5] for q, r in best.items()}
        (out / f"{split}_nbest.json").write_text(json.dumps(nbest, indent=2, ensure_ascii=False), encoding="utf-8")
        scores = squad_scores(answers, self._gold(features))
        (out / f"{split}_squad_scores.json").write_text(json.dumps(scores, indent=2), encoding="utf-8")


@hookimpl
def tf_register_tasks(register: Any) -> None:
    register("qa", QATask)
