"""Text helpers shared by task plugins: aligning word and character spans with sub-word
tokens, splitting long word sequences into overlapping windows, and scoring answer and
summary text (the official SQuAD EM/F1, ROUGE).

Nothing here imports a tokenizer; the functions work on what a fast tokenizer returns
(``word_ids``, ``offset_mapping``, ``sequence_ids``) or on plain strings.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

#: Label id the loss ignores (PyTorch's ``cross_entropy`` default).
IGNORE_INDEX = -100


def first_subtoken_labels(
    word_ids: Sequence[int | None], word_labels: Sequence[int], ignore_index: int = IGNORE_INDEX
) -> list[int]:
    """One label per token: a word's label on its first sub-token, ``ignore_index`` on its
    other sub-tokens and on special tokens (``word_id`` None)."""
    labels, previous = [], None
    for wid in word_ids:
        labels.append(ignore_index if wid is None or wid == previous else word_labels[wid])
        previous = wid
    return labels


def word_windows(subtokens_per_word: Sequence[int], budget: int, stride: int) -> list[tuple[int, int]]:
    """Split words into windows ``[start, end)`` of at most ``budget`` sub-tokens that
    together cover every word.

    Consecutive windows overlap by up to ``stride`` sub-tokens (whole words) so a word
    near a window edge also appears with context in the next one. A single word longer
    than ``budget`` forms a window of its own (the tokenizer then truncates it; its first
    sub-token, which carries the label, survives).
    """
    if budget < 1:
        raise ValueError(f"budget must be at least 1 sub-token, got {budget}")
    n = len(subtokens_per_word)
    if n == 0:
        return [(0, 0)]
    windows: list[tuple[int, int]] = []
    start = 0
    while True:
        end, used = start, 0
        while end < n and (end == start or used + subtokens_per_word[end] <= budget):
            used += subtokens_per_word[end]
            end += 1
        windows.append((start, end))
        if end >= n:
            return windows
        # Step back over whole words while the overlap fits in the stride and leaves room
        # for the next new word, so every window reaches further than the one before.
        nxt, back, room = end, 0, budget - subtokens_per_word[end]
        while nxt - 1 > start and back + subtokens_per_word[nxt - 1] <= min(stride, room):
            nxt -= 1
            back += subtokens_per_word[nxt]
        start = nxt


def window_owners(windows: Sequence[tuple[int, int]], n_words: int) -> list[int]:
    """For every word, the index of the window whose prediction is kept for it: the one
    where the word has the most context on its closer side (ties: the earlier window)."""
    owner = [-1] * n_words
    best = [-1] * n_words
    for k, (start, end) in enumerate(windows):
        for w in range(start, end):
            context = min(w - start, end - 1 - w)
            if context > best[w]:
                owner[w], best[w] = k, context
    missing = [w for w, k in enumerate(owner) if k < 0]
    if missing:
        raise ValueError(f"windows {list(windows)} do not cover words {missing[:10]}")
    return owner


def char_span_to_token_span(
    offsets: Sequence[tuple[int, int] | None], char_start: int, char_end: int
) -> tuple[int, int] | None:
    """Token indices ``(first, last)`` covering characters ``[char_start, char_end)``.

    ``offsets`` holds ``(start, end)`` character offsets for the tokens of the text the
    span is in, and None for every other token (question, special tokens, padding).
    Returns None when the span is not entirely inside the tokens that have offsets (a
    window that does not contain the answer).
    """
    positions = [i for i, o in enumerate(offsets) if o is not None]
    if not positions or char_end <= char_start:
        return None
    first, last = positions[0], positions[-1]
    if offsets[first][0] > char_start or offsets[last][1] < char_end:  # type: ignore[index]
        return None
    start = first
    while start < last and offsets[start + 1] is not None and offsets[start + 1][0] <= char_start:  # type: ignore[index]
        start += 1
    end = last
    while end > start and offsets[end - 1] is not None and offsets[end - 1][1] >= char_end:  # type: ignore[index]
        end -= 1
    return start, end


# -- the official SQuAD v1.1/v2 evaluation (extractive QA and generated answers) ----------------

PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (SQuAD v1.1 script)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in PUNCTUATION)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match_score(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1_score(prediction: str, ground_truth: str) -> float:
    """Token-overlap F1 of the SQuAD v1.1 script. An empty ground truth (an unanswerable
    SQuAD v2 question) scores 1 only for an empty prediction, as in the v2 script."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(ground_truth).split()
    if ground_truth == "":
        return float(not pred_tokens)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: dict[str, str], gold: dict[str, list[str]]) -> dict[str, float]:
    """EM and F1 in percent (max over gold answers, mean over questions), like the official
    script; with unanswerable questions (gold ``[]``) also the has-answer/no-answer breakdown."""
    em: dict[str, float] = {}
    f1: dict[str, float] = {}
    for qid, answers in gold.items():
        if qid not in predictions:
            raise ValueError(f"no prediction for question '{qid}'")
        pred = predictions[qid]
        truths = [a for a in answers if normalize_answer(a)] or [""]
        em[qid] = max(exact_match_score(pred, a) for a in truths)
        f1[qid] = max(f1_score(pred, a) for a in truths)
    total = max(1, len(gold))
    scores = {"exact_match": 100.0 * sum(em.values()) / total, "f1": 100.0 * sum(f1.values()) / total}
    no_answer = {q for q, a in gold.items() if not any(normalize_answer(x) for x in a)}
    if no_answer:
        has_answer = set(gold) - no_answer
        for name, ids in (("has_answer", has_answer), ("no_answer", no_answer)):
            n = max(1, len(ids))
            scores[f"{name}_exact_match"] = 100.0 * sum(em[q] for q in ids) / n
            scores[f"{name}_f1"] = 100.0 * sum(f1[q] for q in ids) / n
    return scores


# -- ROUGE (summaries) -----------------------------------------------------------------------------

ROUGE_TYPES = ("rouge1", "rouge2", "rougeLsum")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def rouge_scores(predictions: Sequence[str], references: Sequence[Sequence[str]], use_stemmer: bool = True) -> dict[str, float]:
    """Mean ROUGE-1/2/Lsum F-measures (rouge-score); each prediction scores against its best
    reference, per ROUGE type (rouge-score's ``score_multi``, the standard with several references).

    Sentences are put on separate lines first, which is what ROUGE-Lsum splits on."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    lines = lambda text: "\n".join(_SENTENCE_END.split(text.strip()))  # noqa: E731
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, refs in zip(predictions, references):
        best = scorer.score_multi([lines(r) for r in refs], lines(pred))
        for k in ROUGE_TYPES:
            totals[k] += best[k].fmeasure
    n = max(1, len(predictions))
    return {k: v / n for k, v in totals.items()}
