"""Text helpers shared by task plugins: aligning word and character spans with sub-word
tokens, and splitting long word sequences into overlapping windows.

Nothing here imports a tokenizer; the functions work on what a fast tokenizer returns
(``word_ids``, ``offset_mapping``, ``sequence_ids``).
"""

from __future__ import annotations

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
