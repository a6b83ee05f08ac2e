"""Build preference pairs (prompt/chosen/rejected jsonl) from the shared data, no human labels.

* ``intents`` (BANKING77, ``intents/banking77/{train,test}.csv``, columns text,category): the
  prompt lists ``--options`` candidate intents (the right one, the labels most confusable with it,
  then random others, shuffled) and the message; chosen = the right intent, rejected = the most
  confusable wrong one: the other label nearest by cosine of TF-IDF centroids of the labels'
  training messages (labels whose customers say the same words).
* ``scitldr`` (``summarization/scitldr/{train,dev,test}.jsonl``, fields source and target, lists
  of sentences): prompt = the abstract (first ``--max-words`` words), chosen = its first reference
  TLDR, rejected = the first TLDR of another paper of the same split (a fixed random derangement).

Deterministic by ``--seed``. Writes ``<out>/<set>/{train,validation,test}.jsonl``; validation is
carved from BANKING77's train (``--validation``) and is SciTLDR's dev split.

    python benchmarks/build_preference_data.py   # ../shared/data -> configs/data/preference/{intents,scitldr}
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
INTENT_PROMPT = "Which banking intent does this customer message express? Answer with one of: {options}.\nMessage: {text}"
TLDR_PROMPT = "Write a one-sentence TL;DR of this paper.\n{source}"


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def confusable_labels(rows: list[dict[str, str]]) -> dict[str, list[str]]:
    """Each label's other labels, most similar first: cosine of the TF-IDF centroids of their messages."""
    labels = sorted({r["category"] for r in rows})
    docs = {lab: Counter() for lab in labels}  # type: dict[str, Counter[str]]
    for r in rows:
        docs[r["category"]].update(words(r["text"]))
    vocab = sorted({w for c in docs.values() for w in c})
    index = {w: i for i, w in enumerate(vocab)}
    df = Counter(w for c in docs.values() for w in c)
    m = np.zeros((len(labels), len(vocab)))
    for i, lab in enumerate(labels):
        for w, n in docs[lab].items():
            m[i, index[w]] = (1 + math.log(n)) * math.log(len(labels) / df[w])
    m /= np.linalg.norm(m, axis=1, keepdims=True) + 1e-12
    sim = m @ m.T
    return {lab: [labels[j] for j in np.argsort(-sim[i], kind="stable") if j != i] for i, lab in enumerate(labels)}


def intent_pairs(rows: list[dict[str, str]], near: dict[str, list[str]], n_options: int, rng: random.Random) -> list[dict[str, Any]]:
    labels = sorted(near)
    pairs = []
    for r in rows:
        gold = r["category"]
        rejected = near[gold][0]
        others = [lab for lab in labels if lab not in (gold, rejected)]
        options = [gold, *near[gold][: max(1, n_options // 2)], *rng.sample(others, len(others))]
        options = list(dict.fromkeys(options))[:n_options]
        rng.shuffle(options)
        text = INTENT_PROMPT.format(options=", ".join(options), text=r["text"].strip())
        pairs.append({"prompt": text, "chosen": gold, "rejected": rejected})
    return pairs


def tldr_pairs(rows: list[dict[str, Any]], max_words: int, rng: random.Random) -> list[dict[str, Any]]:
    order = list(range(len(rows)))
    rng.shuffle(order)
    other = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}  # a derangement (len > 1)
    pairs = []
    for i, r in enumerate(rows):
        source = " ".join(" ".join(r["source"]).split()[:max_words])
        pairs.append({"prompt": TLDR_PROMPT.format(source=source), "chosen": r["target"][0].strip(),
                      "rejected": rows[other[i]]["target"][0].strip()})
    return pairs


def write(directory: Path, splits: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    directory.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        (directory / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return {split: len(rows) for split, rows in splits.items()}


def cap(rows: list[Any], limit: int | None, rng: random.Random) -> list[Any]:
    return rng.sample(rows, limit) if limit is not None and limit < len(rows) else rows


def build_intents(data: Path, out: Path, args: argparse.Namespace) -> dict[str, int]:
    folder = data / "intents" / "banking77"
    read = lambda name: list(csv.DictReader((folder / name).open(encoding="utf-8")))  # noqa: E731
    train, test = read("train.csv"), read("test.csv")
    rng = random.Random(args.seed)
    near = confusable_labels(train)
    rng.shuffle(train)
    n_val = max(1, int(len(train) * args.validation))
    splits = {"train": train[n_val:], "validation": train[:n_val], "test": test}
    limits = {"train": args.max_train, "validation": args.max_eval, "test": args.max_eval}
    return write(out / "intents", {s: intent_pairs(cap(rows, limits[s], rng), near, args.options, rng)
                                   for s, rows in splits.items()})


def build_scitldr(data: Path, out: Path, args: argparse.Namespace) -> dict[str, int]:
    folder = data / "summarization" / "scitldr"
    rng = random.Random(args.seed)
    limits = {"train": args.max_train, "validation": args.max_eval, "test": args.max_eval}
    splits = {}
    for split, name in (("train", "train"), ("validation", "dev"), ("test", "test")):
        rows = [json.loads(line) for line in (folder / f"{name}.jsonl").open(encoding="utf-8") if line.strip()]
        rows = [r for r in rows if r.get("source") and r.get("target")]
        splits[split] = tldr_pairs(cap(rows, limits[split], rng), args.max_words, rng)
    return write(out / "scitldr", splits)


def main(argv: list[str] | None = None) -> dict[str, dict[str, int]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="the shared data folder")
    p.add_argument("--out", type=Path, default=REPO / "configs" / "data" / "preference")
    p.add_argument("--sets", nargs="+", choices=("intents", "scitldr"), default=["intents", "scitldr"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--options", type=int, default=8, help="intents: candidate labels listed in each prompt")
    p.add_argument("--validation", type=float, default=0.1, help="intents: fraction of train held out")
    p.add_argument("--max-train", type=int, default=None, help="cap on training pairs per set")
    p.add_argument("--max-eval", type=int, default=None, help="cap on validation and test pairs per set")
    p.add_argument("--max-words", type=int, default=200, help="scitldr: words of the abstract kept in the prompt")
    args = p.parse_args(argv)
    builders = {"intents": build_intents, "scitldr": build_scitldr}
    counts = {name: builders[name](args.data, args.out, args) for name in args.sets}
    print(json.dumps({"out": str(args.out), **counts}))
    return counts


if __name__ == "__main__":
    main()
