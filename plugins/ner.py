"""Named-entity recognition (token classification) with entity-level seqeval metrics.

Data: CoNLL-style files (one token per line, a tag column, any whitespace-only line
between sentences, ``-DOCSTART-`` lines skipped) or jsonl records with ``tokens`` and
``tags`` lists. Tags in IOB1, IOB2 or BIOES (BILOU letters too) are validated and
converted to IOB2 when read; the model learns them in ``task.label_scheme``.

Sub-words: a word's label sits on its first sub-token, the others are ignored by the
loss. A sentence longer than ``data.max_length`` is split into overlapping windows of
whole words; each word is predicted from the window where it has the most context,
so every input token gets exactly one predicted tag.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from tuneforge import hookimpl
from tuneforge.data import iter_jsonl
from tuneforge.errors import ConfigError, DataError
from tuneforge.tasks import LabelVocabTask, TaskOptions
from tuneforge.text import IGNORE_INDEX, first_subtoken_labels, window_owners, word_windows

log = logging.getLogger(__name__)

#: Prefix letters accepted in files, mapped to BIOES (BILOU's L and U are E and S).
PREFIXES = {"B": "B", "I": "I", "E": "E", "S": "S", "L": "E", "U": "S"}
SCHEME_PREFIXES = {"iob2": ("B", "I"), "bioes": ("B", "I", "E", "S")}


class TagError(ValueError):
    """A tag sequence that its scheme does not allow; ``position`` is the token index."""

    def __init__(self, position: int, message: str) -> None:
        super().__init__(message)
        self.position = position


# -- tag schemes ----------------------------------------------------------------------


def parse_tag(tag: str) -> tuple[str, str] | None:
    """``"B-PER"`` -> ``("B", "PER")``, ``"O"`` -> ``("O", "")``; None if not a tag."""
    if tag == "O":
        return "O", ""
    prefix, sep, etype = tag.partition("-")
    if not sep or not etype or prefix not in PREFIXES:
        return None
    return PREFIXES[prefix], etype


def detect_scheme(sentences: list[list[tuple[str, str]]]) -> str:
    """``bioes`` if any E-/S- tag occurs, ``iob1`` if an I- tag starts an entity, else ``iob2``."""
    iob1 = False
    for tags in sentences:
        prev = ("O", "")
        for p, t in tags:
            if p in ("E", "S"):
                return "bioes"
            if p == "I" and not (prev[0] in ("B", "I") and prev[1] == t):
                iob1 = True
            prev = (p, t)
    return "iob1" if iob1 else "iob2"


def to_iob2(tags: list[tuple[str, str]], scheme: str) -> list[str]:
    """Validate parsed ``tags`` against ``scheme`` and return them as IOB2 strings."""
    out: list[str] = []
    n = len(tags)
    for i, (p, t) in enumerate(tags):
        prev = tags[i - 1] if i else ("O", "")
        nxt = tags[i + 1] if i + 1 < n else ("O", "")
        continues = prev[0] in ("B", "I") and prev[1] == t
        if p == "O":
            out.append("O")
            continue
        if scheme in ("iob1", "iob2") and p in ("E", "S"):
            raise TagError(i, f"'{p}-{t}' is a BIOES tag in a file read as {scheme.upper()}; set task.tag_scheme: bioes")
        if scheme == "iob2" and p == "I" and not continues:
            raise TagError(i, f"'I-{t}' does not continue a '{t}' entity (IOB2 starts entities with B-); "
                              "if the file is IOB1 set task.tag_scheme: iob1")
        if scheme == "bioes":
            if p in ("I", "E") and not continues:
                raise TagError(i, f"'{p}-{t}' does not continue a '{t}' entity (BIOES starts entities with B- or S-)")
            if p in ("B", "I") and not (nxt[0] in ("I", "E") and nxt[1] == t):
                raise TagError(i, f"'{p}-{t}' is not followed by I-{t} or E-{t} (BIOES ends entities with E- or S-)")
        if scheme == "iob1":
            out.append(f"I-{t}" if p == "I" and continues else f"B-{t}")
        else:
            out.append(f"{'B' if p in ('B', 'S') else 'I'}-{t}")
    return out


def iob2_to_bioes(tags: list[str]) -> list[str]:
    """Well-formed IOB2 -> BIOES."""
    out = []
    for i, tag in enumerate(tags):
        if tag == "O":
            out.append(tag)
            continue
        inside = i + 1 < len(tags) and tags[i + 1] == f"I-{tag[2:]}"
        if tag[0] == "B":
            out.append(tag if inside else "S" + tag[1:])
        else:
            out.append(tag if inside else "E" + tag[1:])
    return out


def entity_type(tag: str) -> str:
    return tag[2:] if tag != "O" else ""


# -- readers ----------------------------------------------------------------------------


class NEROptions(TaskOptions):
    token_column: int = Field(0, description="CoNLL: column of the token (0-based; negative counts from the end).")
    tag_column: int = Field(-1, description="CoNLL: column of the tag (default: the last column).")
    column_separator: str | None = Field(None, description="CoNLL: column separator; default any whitespace.")
    docstart: str = Field("-DOCSTART-", description="CoNLL: token of document-boundary lines, which are skipped.")
    tokens_field: str = Field("tokens", description="jsonl: field holding the list of tokens.")
    tags_field: str = Field("tags", description="jsonl: field holding the list of tags.")
    tag_scheme: Literal["auto", "iob1", "iob2", "bioes"] = Field(
        "auto", description="Scheme of the files' tags; auto: bioes if E-/S- occur, iob1 if an I- starts an entity."
    )
    label_scheme: Literal["iob2", "bioes"] = Field("iob2", description="Tags the model learns and predicts.")
    entity_types: list[str] | None = Field(None, description="Entity types in label order; default: sorted training types.")
    stride: int = Field(16, ge=0, description="Sub-tokens of overlap between the windows of a too-long sentence.")
    seqeval_mode: Literal["conlleval", "strict"] = Field(
        "conlleval",
        description="conlleval: seqeval's default (CoNLL-eval compatible; an I- after O starts an entity); "
        "strict: only entities well-formed in label_scheme count.",
    )


def read_conll(path: Path, options: NEROptions, with_tags: bool = True) -> list[dict[str, Any]]:
    """Sentences of a CoNLL file as ``{"tokens", "raw_tags", "lines"}`` (tags parsed, not converted)."""
    sentences: list[dict[str, Any]] = []
    tokens: list[str] = []
    tags: list[tuple[str, str]] = []
    lines: list[int] = []

    def flush() -> None:
        if tokens:
            sentences.append({"tokens": list(tokens), "raw_tags": list(tags), "lines": list(lines)})
            tokens.clear()
            tags.clear()
            lines.clear()

    sep = options.column_separator
    with path.open(encoding="utf-8") as fh:
        for ln, raw in enumerate(fh, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                flush()
                continue
            cols = line.split(sep) if sep else line.split()
            if cols[0] == options.docstart:
                flush()
                continue
            needed = [options.token_column] + ([options.tag_column] if with_tags else [])
            if any(not -len(cols) <= c < len(cols) for c in needed):
                raise DataError(
                    f"{path}, line {ln}: expected a token in column {options.token_column}"
                    + (f" and a tag in column {options.tag_column}" if with_tags else "")
                    + f", found {len(cols)} column(s): {line!r}; set task.token_column/tag_column/column_separator"
                )
            if with_tags:
                tag = cols[options.tag_column].strip()
                parsed = parse_tag(tag)
                if parsed is None:
                    raise DataError(f"{path}, line {ln}: '{tag}' is not a tag (expected O or B-/I-/E-/S-<type>)")
                tags.append(parsed)
            tokens.append(cols[options.token_column].strip())
            lines.append(ln)
    flush()
    return sentences


def read_token_jsonl(path: Path, options: NEROptions, with_tags: bool = True) -> list[dict[str, Any]]:
    """Records of a jsonl file with token and tag lists, keeping line numbers."""
    sentences = []
    fields = [options.tokens_field] + ([options.tags_field] if with_tags else [])
    for ln, obj in iter_jsonl(path):
        for f in fields:
            value = obj.get(f)
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                raise DataError(f"{path}, line {ln}: field '{f}' must be a list of strings (fields present: "
                                f"{', '.join(sorted(obj)) or 'none'})")
        tokens = obj[options.tokens_field]
        if not tokens:
            raise DataError(f"{path}, line {ln}: '{options.tokens_field}' is empty")
        parsed: list[tuple[str, str]] = []
        if with_tags:
            tags = obj[options.tags_field]
            if len(tags) != len(tokens):
                raise DataError(f"{path}, line {ln}: {len(tokens)} tokens but {len(tags)} tags")
            for j, tag in enumerate(tags):
                p = parse_tag(tag)
                if p is None:
                    raise DataError(f"{path}, line {ln}, token {j + 1}: '{tag}' is not a tag "
                                    "(expected O or B-/I-/E-/S-<type>)")
                parsed.append(p)
        sentences.append({"tokens": tokens, "raw_tags": parsed, "lines": [ln] * len(tokens)})
    return sentences


def read_ner_file(path: str | Path, options: NEROptions, fmt: str = "auto", with_tags: bool = True) -> list[dict[str, Any]]:
    """Read CoNLL or jsonl into records ``{"tokens", "tags" (IOB2), "lines", "source"}``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file '{path}' does not exist")
    if fmt == "auto":
        fmt = "jsonl" if path.suffix.lower() in (".jsonl", ".ndjson", ".json") else "conll"
    if fmt not in ("conll", "jsonl"):
        raise DataError(f"{path}: the ner task reads data.format 'conll' or 'jsonl' (or 'auto'), not '{fmt}'")
    reader = read_conll if fmt == "conll" else read_token_jsonl
    sentences = reader(path, options, with_tags)
    if not sentences:
        raise DataError(f"{path}: no sentences found")
    scheme: str = options.tag_scheme
    if with_tags:
        if scheme == "auto":
            scheme = detect_scheme([s["raw_tags"] for s in sentences])
            log.info("%s: tags read as %s", path, scheme.upper())
        for s in sentences:
            try:
                s["tags"] = to_iob2(s["raw_tags"], scheme)
            except TagError as exc:
                raise DataError(f"{path}, line {s['lines'][exc.position]}: {exc}") from None
    for s in sentences:
        del s["raw_tags"]
        s["source"] = str(path)
    log.info("%s: %d sentences, %d tokens", path, len(sentences), sum(len(s["tokens"]) for s in sentences))
    return sentences


# -- the task -------------------------------------------------------------------------------


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


@hookimpl
def tf_register_tasks(register: Any) -> None:
    register("ner", NERTask)
