"""A labelled data set with many labels, each decided by a keyword the tiny BERT's vocabulary knows."""

from __future__ import annotations

import random
from pathlib import Path

KEYWORDS = ["movie", "film", "book", "song", "show", "music", "play", "restaurant", "weather", "rain",
            "sun", "snow", "cinema", "playlist", "table", "star"]
FILLER = ["the", "a", "this", "that", "is", "very", "not", "please", "i", "you", "we", "it", "with", "for"]


def write_many_label_csv(path: Path, per_label: int = 16, seed: int = 0) -> Path:
    rng = random.Random(seed)
    rows = []
    for label in KEYWORDS:
        for _ in range(per_label):
            words = rng.sample(FILLER, 4)
            words.insert(rng.randrange(5), label)
            rows.append(f"{' '.join(words)},{label}-intent")
    rng.shuffle(rows)
    path.write_text("text,category\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path
