"""Summarization (sequence-to-sequence): any ``AutoModelForSeq2SeqLM`` (T5, BART, ...) or an
``EncoderDecoderModel`` warm-started from two encoder checkpoints (e.g. MiniLM-to-MiniLM),
evaluated by generating summaries and scoring them with ROUGE-1/2/Lsum (rouge-score).

Records (jsonl/json/csv) hold a source and one or more targets; list-valued fields are
joined (SciTLDR: ``source`` is a list of sentences, ``target`` a list of TLDRs)::

    {"source": ["First sentence.", "Second sentence."], "target": ["tldr 1", "tldr 2"]}

Training uses the first target or one example per target (``train_targets``); evaluation
scores every record against all of its targets (the best-matching reference per ROUGE type).
"""

from __future__ import annotations

import json
import logging
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from tuneforge import hookimpl
from tuneforge.data import record_origin, require_fields
from tuneforge.errors import ConfigError, DataError
from tuneforge.hub import resolve_pretrained
from tuneforge.lm import token_nll
from tuneforge.tasks import Task, TaskOptions, decode_ids, generate
from tuneforge.text import IGNORE_INDEX, ROUGE_TYPES, rouge_scores

log = logging.getLogger(__name__)


class SummarizationOptions(TaskOptions):
    source_field: str = Field("source", description="Field holding the text to summarise (a string or a list of strings).")
    target_field: str = Field("target", description="Field holding the summary (a string or a list of references).")
    join_separator: str = Field(" ", description="Joins list-valued source fields (e.g. sentences) into one text.")
    source_prefix: str = Field("", description="Text put before every source (T5: 'summarize: ').")
    train_targets: Literal["first", "each"] = Field(
        "first", description="With several references per record: train on the first, or one example per reference."
    )
    max_source_length: int | None = Field(None, ge=8, description="Source tokens kept; default data.max_length.")
    max_target_length: int = Field(64, ge=4, description="Target tokens kept for training.")
    architecture: Literal["auto", "seq2seq", "encoder_decoder"] = Field(
        "auto",
        description="seq2seq: AutoModelForSeq2SeqLM; encoder_decoder: warm-start an EncoderDecoderModel from "
        "encoder checkpoints; auto: seq2seq when the model is an encoder-decoder, else encoder_decoder.",
    )
    decoder_name_or_path: str | None = Field(
        None, description="encoder_decoder: the decoder's checkpoint (default: the encoder's, model.name_or_path)."
    )
    tie_encoder_decoder: bool = Field(False, description="encoder_decoder: share encoder and decoder weights.")
    num_beams: int = Field(1, ge=1, description="Beam size of generation-based evaluation.")
    max_new_tokens: int = Field(48, ge=1, description="Length limit of generated summaries.")
    no_repeat_ngram_size: int = Field(0, ge=0, description="Block repeated n-grams in generation (0: off).")
    use_stemmer: bool = Field(True, description="Porter-stem words before ROUGE matching.")
    report_samples: int = Field(20, ge=0, description="Test examples written to reports/test_samples.jsonl.")


def join_text(value: Any, separator: str, where: str, field: str, *, allow_empty: bool = False) -> str:
    """A string field, or a list of strings joined with ``separator``; DataError otherwise."""
    if isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            raise DataError(f"{where}: field '{field}' must be a string or a list of strings, got {value!r:.80}")
        value = separator.join(v.strip() for v in value)
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{field}' must be a string or a list of strings, got {type(value).__name__}")
    if not value.strip() and not allow_empty:
        raise DataError(f"{where}: field '{field}' is empty")
    return value


def references_of(value: Any, where: str, field: str) -> list[str]:
    """The reference summaries of a target field: a string, or a non-empty list of strings."""
    refs = [value] if isinstance(value, str) else value
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) and r.strip() for r in refs):
        raise DataError(f"{where}: field '{field}' must be a non-empty string or a non-empty list of them, got {value!r:.80}")
    return [r.strip() for r in refs]


class SummarizationTask(Task):
    name = "summarization"
    Options = SummarizationOptions
    primary_metric = "rougeLsum"
    metric_names = ("rouge1", "rouge2", "rougeLsum", "gen_words", "loss")
    greater_is_better = True
    metadata_keys = frozenset({"references"})
    options: SummarizationOptions

    def __init__(self, options: Any, config: Any) -> None:
        super().__init__(options, config)
        self.tokenizer: Any = None  # set by load_tokenizer/encode; decodes generated ids

    # -- model ----------------------------------------------------------------------------

    @cached_property
    def warm_start(self) -> bool:
        """True when an EncoderDecoderModel is built from encoder checkpoints."""
        arch = self.options.architecture
        if arch != "auto":
            return arch == "encoder_decoder"
        from transformers import AutoConfig

        m = self.config.model
        cfg = AutoConfig.from_pretrained(self.model_path(), revision=m.revision, trust_remote_code=m.trust_remote_code)
        return not getattr(cfg, "is_encoder_decoder", False)

    def load_tokenizer(self) -> Any:
        tokenizer = super().load_tokenizer()
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ConfigError(f"tokenizer of '{self.config.model.name_or_path}' has neither a pad nor an eos token")
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        return tokenizer

    def special_ids(self, tokenizer: Any) -> dict[str, int]:
        """Decoder start / end / pad ids of a warm-started encoder-decoder (BERT: [CLS], [SEP], [PAD])."""
        start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        if start is None or end is None:
            raise ConfigError(
                f"tokenizer of '{self.config.model.name_or_path}' has no cls/bos or sep/eos token to start and end "
                "decoding with; warm-starting an encoder-decoder needs both"
            )
        return {"decoder_start_token_id": start, "eos_token_id": end, "pad_token_id": tokenizer.pad_token_id}

    def build_model(self, tokenizer: Any) -> torch.nn.Module:
        from transformers import AutoModelForSeq2SeqLM, EncoderDecoderModel

        if not self.warm_start:
            return AutoModelForSeq2SeqLM.from_pretrained(self.model_path(), **self.pretrained_kwargs())
        o = self.options
        decoder = resolve_pretrained(o.decoder_name_or_path) if o.decoder_name_or_path else self.model_path()
        model = EncoderDecoderModel.from_encoder_decoder_pretrained(
            self.model_path(), decoder, tie_encoder_decoder=o.tie_encoder_decoder
        )
        ids = self.special_ids(tokenizer)
        for cfg in (model.config, model.generation_config):
            for key, value in ids.items():
                setattr(cfg, key, value)
        model.config.vocab_size = model.config.decoder.vocab_size
        if self.config.model.dtype not in ("float32", "auto"):
            model = model.to(getattr(torch, self.config.model.dtype))
        return model

    # -- features ---------------------------------------------------------------------------

    def prepare(self, train_records: list[dict[str, Any]]) -> None:
        o = self.options
        require_fields(train_records, [o.source_field, o.target_field], self.config.data.train or "train split")

    def _target_ids(self, texts: list[str], tokenizer: Any) -> list[list[int]]:
        limit = self.options.max_target_length
        if self.warm_start:  # decoder input starts with [CLS] (shifted in); labels end with [SEP]
            end = self.special_ids(tokenizer)["eos_token_id"]
            ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=limit - 1)["input_ids"]
            return [[*row, end] for row in ids]
        return tokenizer(text_target=texts, truncation=True, max_length=limit)["input_ids"]

    def encode(self, records: list[dict[str, Any]], tokenizer: Any, split: str) -> list[dict[str, Any]]:
        self.tokenizer = tokenizer
        o = self.options
        source_name = getattr(self.config.data, split, None) or f"{split} split"
        has_targets = split != "predict"
        require_fields(records, [o.source_field] + ([o.target_field] if has_targets else []), source_name)
        sources, refs = [], []
        for i, rec in enumerate(records):
            where = record_origin(rec, source_name, i)
            sources.append(o.source_prefix + join_text(rec[o.source_field], o.join_separator, where, o.source_field))
            if has_targets:
                refs.append(references_of(rec[o.target_field], where, o.target_field))
        max_source = o.max_source_length or self.config.data.max_length
        # input ids and mask only: token_type_ids would reach seq2seq models that take none (BART)
        enc = tokenizer(sources, truncation=True, max_length=max_source, return_token_type_ids=False)
        n_long = sum(len(ids) >= max_source for ids in enc["input_ids"])
        if n_long:
            log.info("%s: %d of %d sources truncated to %d tokens", split, n_long, len(records), max_source)
        if not has_targets:
            return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i]} for i in range(len(records))]
        train_each = split == "train" and o.train_targets == "each"
        pairs = [(i, r) for i, rs in enumerate(refs) for r in (rs if train_each else rs[:1])]
        labels = self._target_ids([r for _, r in pairs], tokenizer)
        n_cut = sum(len(ids) >= o.max_target_length for ids in labels)
        if n_cut:
            log.info("%s: %d of %d targets truncated to %d tokens", split, n_cut, len(pairs), o.max_target_length)
        features = []
        for (i, _), label_ids in zip(pairs, labels):
            feat: dict[str, Any] = {"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                                    "labels": label_ids}
            if split != "train":
                feat["references"] = refs[i]
            features.append(feat)
        return features

    # -- evaluation --------------------------------------------------------------------------

    def evaluation_step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        o = self.options
        kwargs: dict[str, Any] = {"num_beams": o.num_beams, "max_new_tokens": o.max_new_tokens, "do_sample": False}
        if o.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = o.no_repeat_ngram_size
        out = {"generated": generate(model, **inputs, **kwargs)}
        labels = batch.get("labels")
        if labels is not None:
            nll = token_nll(model(**inputs, labels=labels).logits, labels)
            mask = labels != IGNORE_INDEX
            out["loss"] = (nll * mask).sum(1) / mask.sum(1).clamp(min=1)
        return out

    def decode(self, outputs: dict[str, np.ndarray]) -> list[str]:
        return [decode_ids(self.tokenizer, row) for row in outputs["generated"]]

    def metric_inputs(self, outputs: dict[str, np.ndarray], features: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
        """Generated texts and the reference lists, one per example."""
        return self.decode(outputs), [list(f["references"]) for f in features]

    def compute_metrics(self, outputs: dict[str, np.ndarray], split: str, features: list[dict[str, Any]]) -> dict[str, float]:
        predictions = self.decode(outputs)
        metrics = rouge_scores(predictions, [f["references"] for f in features], self.options.use_stemmer)
        metrics["gen_words"] = float(np.mean([len(p.split()) for p in predictions])) if predictions else 0.0
        return metrics

    def predictions(self, outputs: dict[str, np.ndarray], features: list[dict[str, Any]], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"summary": text} for text in self.decode(outputs)]

    def write_reports(self, outputs: dict[str, np.ndarray], split: str, features: list[dict[str, Any]], directory: Path) -> None:
        out = directory / "reports"
        out.mkdir(parents=True, exist_ok=True)
        predictions = self.decode(outputs)
        rows = [
            {"source": self.tokenizer.decode(f["input_ids"], skip_special_tokens=True), "prediction": p,
             "references": f["references"]}
            for f, p in zip(features[: self.options.report_samples], predictions)
        ]
        (out / f"{split}_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        (out / f"{split}_predictions.txt").write_text("".join(p.replace("\n", " ") + "\n" for p in predictions), encoding="utf-8")


@hookimpl
def tf_register_tasks(register: Any) -> None:
    register("summarization", SummarizationTask)


@hookimpl
def tf_register_metrics(register: Any) -> None:
    """ROUGE F-measures: ``fn(predictions, references)``; a reference may be a string or a list."""
    for kind in ROUGE_TYPES:
        register(kind, lambda p, r, kind=kind: rouge_scores(
            list(p), [[x] if isinstance(x, str) else list(x) for x in r])[kind])
