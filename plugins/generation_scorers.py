"""Scorers of generated text, for tasks that score what a model generates (``causal_lm``'s
``task.generation.scorers``).

A scorer is a function ``(predictions, references) -> {metric: value}``: one generated
string and a list of reference strings per example. Called on a single example it gives
that example's score (what the per-example generation reports show).

============  =====================================  ==============================================
scorer        metrics                                what it compares
============  =====================================  ==============================================
exact_match   ``exact_match`` (0-1)                  the output equals a reference, whitespace collapsed
accuracy      ``accuracy``, ``unparseable`` (0-1)    the label the output parses to (see
                                                     :func:`parse_label`) against the reference label;
                                                     an output naming no label is wrong and counted
rouge         ``rouge1``, ``rouge2``, ``rougeLsum``  ROUGE F-measures (0-1), best reference per type
squad         ``squad_exact_match``, ``squad_f1``    SQuAD-normalised EM/F1 (0-100), best reference
chrf          ``chrf`` (0-100)                       sacrebleu's corpus chrF, all references
bleu          ``bleu`` (0-100)                       sacrebleu's corpus BLEU, all references
============  =====================================  ==============================================
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from tuneforge.errors import did_you_mean
from tuneforge.text import ROUGE_TYPES, rouge_scores, squad_scores

Predictions = Sequence[str]
References = Sequence[Sequence[str]]


def _check(predictions: Predictions, references: References) -> int:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    return max(1, len(predictions))


def _squash(text: str) -> str:
    return " ".join(text.split())


def exact_match(predictions: Predictions, references: References) -> dict[str, float]:
    """Fraction of outputs equal to one of their references (surrounding and repeated
    whitespace ignored, case and punctuation kept)."""
    n = _check(predictions, references)
    hits = sum(_squash(p) in {_squash(r) for r in refs} for p, refs in zip(predictions, references))
    return {"exact_match": hits / n}


def _label_text(text: str) -> str:
    """Lower case, punctuation as spaces, whitespace collapsed: ``"Play-Music."`` -> ``"play music"``."""
    return " ".join(re.sub(r"[^\w\s]|_", " ", text.lower()).split())


def parse_label(output: str, labels: Sequence[str]) -> str | None:
    """The label an output names, or None.

    Compared in lower case with punctuation as spaces: the output is the label itself, or it
    contains exactly one label as whole words ("The intent is PlayMusic." -> ``PlayMusic``;
    when one found label contains the others, e.g. "play" and "play music", the longest).
    An output naming no label, or two unrelated ones, is unparseable."""
    text = _label_text(output)
    by_text = {_label_text(label): label for label in labels if _label_text(label)}
    if text in by_text:
        return by_text[text]
    found = [t for t in by_text if re.search(rf"(?<!\w){re.escape(t)}(?!\w)", text)]
    if not found:
        return None
    longest = max(found, key=len)
    return by_text[longest] if all(t in longest for t in found) else None


def accuracy(predictions: Predictions, references: References, labels: Sequence[str] | None = None) -> dict[str, float]:
    """Classification as generation: an output is right when the label it parses to is its
    reference. ``labels``: the label set (default: every distinct reference). ``unparseable``
    is the fraction of outputs that name no label (they count as wrong)."""
    n = _check(predictions, references)
    label_set = list(labels) if labels is not None else sorted({r for refs in references for r in refs})
    right = unparseable = 0
    for p, refs in zip(predictions, references):
        label = parse_label(p, label_set)
        if label is None:
            unparseable += 1
        elif _label_text(label) in {_label_text(r) for r in refs}:
            right += 1
    return {"accuracy": right / n, "unparseable": unparseable / n}


def rouge(predictions: Predictions, references: References) -> dict[str, float]:
    """ROUGE-1/2/Lsum F-measures (Porter stemming, one sentence per line for Lsum); with several
    references an output scores against its best one per ROUGE type."""
    _check(predictions, references)
    return rouge_scores(predictions, references, use_stemmer=True)


def squad(predictions: Predictions, references: References) -> dict[str, float]:
    """SQuAD-normalised exact match and token F1 in percent, best reference per example."""
    _check(predictions, references)
    keys = [str(i) for i in range(len(predictions))]
    scores = squad_scores(dict(zip(keys, predictions)), {k: list(refs) for k, refs in zip(keys, references)})
    return {"squad_exact_match": scores["exact_match"], "squad_f1": scores["f1"]}


def _reference_streams(references: References) -> list[list[str | None]]:
    """sacrebleu's layout: one stream per reference position, None where an example has fewer."""
    width = max((len(refs) for refs in references), default=1)
    return [[refs[j] if j < len(refs) else None for refs in references] for j in range(width)]


def _sacrebleu() -> Any:
    import sacrebleu

    return sacrebleu


def chrf(predictions: Predictions, references: References) -> dict[str, float]:
    """sacrebleu's corpus chrF (character 6-grams, beta 2), 0-100."""
    _check(predictions, references)
    return {"chrf": float(_sacrebleu().corpus_chrf(list(predictions), _reference_streams(references)).score)}


def bleu(predictions: Predictions, references: References) -> dict[str, float]:
    """sacrebleu's corpus BLEU (13a tokenisation, exponential smoothing), 0-100."""
    _check(predictions, references)
    return {"bleu": float(_sacrebleu().corpus_bleu(list(predictions), _reference_streams(references)).score)}


@dataclass(frozen=True)
class GenerationScorer:
    """A built-in scorer: its function, the metric names it returns, and the package it needs."""

    fn: Callable[..., dict[str, float]]
    metrics: tuple[str, ...]
    requires: str | None = None


SCORERS: Mapping[str, GenerationScorer] = MappingProxyType({
    "exact_match": GenerationScorer(exact_match, ("exact_match",)),
    "accuracy": GenerationScorer(accuracy, ("accuracy", "unparseable")),
    "rouge": GenerationScorer(rouge, ROUGE_TYPES),
    "squad": GenerationScorer(squad, ("squad_exact_match", "squad_f1")),
    "chrf": GenerationScorer(chrf, ("chrf",), requires="sacrebleu"),
    "bleu": GenerationScorer(bleu, ("bleu",), requires="sacrebleu"),
})
#: Generation metrics where lower is better (every other one: higher is better).
LOWER_IS_BETTER = frozenset({"unparseable"})


def get_scorer(name: str) -> GenerationScorer:
    """The scorer called ``name``; ValueError naming the valid ones (or the package to install)."""
    scorer = SCORERS.get(name)
    if scorer is None:
        raise ValueError(f"no scorer named '{name}'{did_you_mean(name, SCORERS)}; valid scorers: {', '.join(SCORERS)}")
    if scorer.requires and importlib.util.find_spec(scorer.requires) is None:
        raise ValueError(f"scorer '{name}' needs the {scorer.requires} package: pip install {scorer.requires}")
    return scorer


def scorer_of_metric(metric: str) -> str | None:
    """The built-in scorer that produces ``metric`` (None: no scorer does)."""
    return next((name for name, s in SCORERS.items() if metric in s.metrics), None)


def all_metric_names() -> tuple[str, ...]:
    return tuple(m for s in SCORERS.values() for m in s.metrics)

