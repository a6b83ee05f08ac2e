"""SQuAD-format question answering data: reading, checking and splitting by article.

Shared by the extractive ``qa`` task and the generative ``generative_qa`` task. Data is SQuAD
JSON (``{"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}``) or jsonl records
with ``id``, ``question``, ``context`` and ``answers`` (a list of ``{"text", "answer_start"}``
or the Hugging Face ``{"text": [...], "answer_start": [...]}``). Each question becomes one flat
record: ``id``, ``question``, ``context``, ``title``, ``article`` (its article's index) and
``answers`` (empty for an unanswerable SQuAD v2 question).

:class:`ArticleSplitOptions` (``dev_fraction``/``test_fraction``/``split_seed``) hold out
whole articles of one file as validation and test, for data sets that come as one file
(XQuAD): the same seed gives the same articles to every task that reads the file.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from tuneforge.data import iter_jsonl
from tuneforge.errors import ConfigError, DataError
from tuneforge.tasks import TaskOptions

log = logging.getLogger(__name__)


class ArticleSplitOptions(TaskOptions):
    """Task options that hold out whole articles of ``data.train`` as validation and test."""

    dev_fraction: float | None = Field(
        None, gt=0, lt=1, description="Hold out this fraction of data.train's articles as validation (by article)."
    )
    test_fraction: float = Field(0.0, ge=0, lt=1, description="Hold out this fraction of data.train's articles as test.")
    split_seed: int = Field(0, ge=0, description="Seed of the article split.")

    @model_validator(mode="after")
    def _fractions(self) -> ArticleSplitOptions:
        if (self.dev_fraction or 0.0) + self.test_fraction >= 1.0:
            raise ValueError("dev_fraction + test_fraction must leave some articles for training")
        return self


def _answers(raw: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(raw, dict):  # Hugging Face layout: {"text": [...], "answer_start": [...]}
        texts, starts = raw.get("text", []), raw.get("answer_start", [])
        if len(texts) != len(starts):
            raise DataError(f"{where}: answers has {len(texts)} texts but {len(starts)} answer_start values")
        raw = [{"text": t, "answer_start": s} for t, s in zip(texts, starts)]
    if not isinstance(raw, list):
        raise DataError(f"{where}: 'answers' must be a list of {{text, answer_start}}")
    out = []
    for j, a in enumerate(raw):
        if not isinstance(a, dict) or not isinstance(a.get("text"), str) or not isinstance(a.get("answer_start"), int):
            raise DataError(f"{where}, answer {j + 1}: needs a string 'text' and an integer 'answer_start'")
        out.append({"text": a["text"], "answer_start": a["answer_start"]})
    return out


def _question(qa: Any, context: str, title: str, article: int, where: str) -> dict[str, Any]:
    if not isinstance(qa, dict):
        raise DataError(f"{where}: a question must be an object")
    for key in ("id", "question"):
        if not isinstance(qa.get(key), str | int):
            raise DataError(f"{where}: missing field '{key}' (fields present: {', '.join(sorted(qa)) or 'none'})")
    where = f"{where} (id {qa['id']})"
    if "answers" not in qa and not qa.get("is_impossible"):
        raise DataError(f"{where}: missing field 'answers'")
    answers = _answers(qa.get("answers", []), where)
    impossible = bool(qa.get("is_impossible", False)) or not answers
    for a in answers:
        start, text = a["answer_start"], a["text"]
        if context[start : start + len(text)] != text:
            found = [m.start() for m in re.finditer(re.escape(text), context)] if text else []
            if not found:
                raise DataError(f"{where}: answer '{text}' does not occur in the context")
            a["answer_start"] = min(found, key=lambda s: abs(s - start))  # nearest occurrence
            a["moved"] = True
    return {"id": str(qa["id"]), "question": str(qa["question"]), "context": context, "title": title,
            "article": article, "answers": [] if impossible else answers}


def read_squad(path: Path) -> list[dict[str, Any]]:
    """Questions of a SQuAD JSON or jsonl file as flat records (answer offsets checked)."""
    if not path.is_file():
        raise DataError(f"data file '{path}' does not exist")
    records: list[dict[str, Any]] = []
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for ln, obj in iter_jsonl(path):
            if not isinstance(obj.get("context"), str):
                raise DataError(f"{path}, line {ln}: needs an object with a string 'context'")
            title = str(obj.get("title", ""))
            records.append(_question(obj, obj["context"], title, -1, f"{path}, line {ln}"))
        titles = {t: i for i, t in enumerate(dict.fromkeys(r["title"] for r in records))}
        for r in records:  # jsonl articles: records sharing a title
            r["article"] = titles[r["title"]]
    else:
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON: {exc.msg} (line {exc.lineno})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
            raise DataError(f"{path}: expected SQuAD JSON, an object with a 'data' list of articles")
        for ai, article in enumerate(obj["data"]):
            paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
            if not isinstance(paragraphs, list):
                raise DataError(f"{path}: data[{ai}] has no 'paragraphs' list")
            title = str(article.get("title", ai))
            for pi, para in enumerate(paragraphs):
                where = f"{path}: data[{ai}].paragraphs[{pi}]"
                if not isinstance(para, dict) or not isinstance(para.get("context"), str) or not isinstance(para.get("qas"), list):
                    raise DataError(f"{where}: needs a string 'context' and a 'qas' list")
                for qi, qa in enumerate(para["qas"]):
                    records.append(_question(qa, para["context"], title, ai, f"{where}.qas[{qi}]"))
    if not records:
        raise DataError(f"{path}: no questions found")
    moved = sum(any(a.pop("moved", False) for a in r["answers"]) for r in records)
    if moved:
        log.warning("%s: %d answers had an answer_start not matching their text; moved to the nearest match", path, moved)
    ids = Counter(r["id"] for r in records)
    dupes = [q for q, n in ids.items() if n > 1]
    if dupes:
        raise DataError(f"{path}: question ids must be unique; repeated: {dupes[:5]}")
    return records


def split_articles(n_articles: int, dev_fraction: float, test_fraction: float, seed: int) -> dict[str, set[int]]:
    """Seeded article indices for train/validation/test (each held-out part gets >= 1 article)."""
    order = list(range(n_articles))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(test_fraction * n_articles)) if test_fraction else 0
    n_dev = max(1, round(dev_fraction * n_articles)) if dev_fraction else 0
    if n_test + n_dev >= n_articles:
        raise DataError(f"cannot hold out {n_dev} + {n_test} of {n_articles} articles and keep some for training")
    return {"test": set(order[:n_test]), "validation": set(order[n_test : n_test + n_dev]),
            "train": set(order[n_test + n_dev :])}


def check_article_split(options: ArticleSplitOptions, data: Any) -> None:
    """ConfigError unless each held-out fraction reads the training file and each split that
    reads the training file holds out a fraction (otherwise train and test would overlap)."""
    for key, fraction in (("validation", options.dev_fraction), ("test", options.test_fraction)):
        other = getattr(data, key)
        same = other is not None and data.train is not None and Path(other).resolve() == Path(data.train).resolve()
        name = "dev_fraction" if key == "validation" else "test_fraction"
        if fraction and not same:
            raise ConfigError(f"task.{name} holds out articles of data.train for {key}; set data.{key} to the same "
                              f"file as data.train ({data.train})")
        if same and not fraction:
            raise ConfigError(f"data.{key} is the same file as data.train; set task.{name} to hold out part of "
                              "its articles")


def read_split(path: str, split: str, options: ArticleSplitOptions, data: Any) -> list[dict[str, Any]]:
    """The questions of ``path`` for ``split``: the split's articles when ``path`` is the
    training file and fractions are held out, else all of them."""
    records = read_squad(Path(path))
    if (options.dev_fraction or options.test_fraction) and data.train and Path(path).resolve() == Path(data.train).resolve():
        n_articles = 1 + max(r["article"] for r in records)
        keep = split_articles(n_articles, options.dev_fraction or 0.0, options.test_fraction, options.split_seed)[split]
        records = [r for r in records if r["article"] in keep]
        log.info("%s: %s split = %d articles, %d questions (split_seed %d)", path, split, len(keep), len(records),
                 options.split_seed)
    return records
