"""Extractive QA task: SQuAD v1.1/v2 reading, article split, windows with doc stride,
n-best post-processing, the official EM/F1, and a tiny end-to-end run."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tuneforge.config import validate
from tuneforge.errors import ConfigError, DataError
from tuneforge.plugins.qa import (
    QATask,
    exact_match_score,
    f1_score,
    normalize_answer,
    read_squad,
    split_articles,
    squad_scores,
)
from tuneforge.testing.pytest_plugin import WORDS, deep_merge
from tuneforge.text import char_span_to_token_span

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
XQUAD = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "qa" / "xquad_en" / "xquad.en.json"


def squad(articles: list[list[tuple[str, list[dict[str, Any]]]]]) -> dict[str, Any]:
    """SQuAD JSON from ``[[(context, [qa, ...]), ...], ...]`` (one inner list per article)."""
    return {"version": "1.1", "data": [
        {"title": f"article {i}", "paragraphs": [{"context": c, "qas": qas} for c, qas in paras]}
        for i, paras in enumerate(articles)
    ]}


def qa(qid: str, question: str, context: str, answer: str | None, **extra: Any) -> dict[str, Any]:
    answers = [] if answer is None else [{"text": answer, "answer_start": context.index(answer)}]
    return {"id": qid, "question": question, "answers": answers, **extra}


def write_json(path: Path, obj: Any) -> str:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return str(path)


def make_task(tmp_path: Path, model: str = "unused", options: dict[str, Any] | None = None, **data: Any) -> QATask:
    cfg = validate({"model": {"name_or_path": model}, "task": {"name": "qa", "doc_stride": 16, **(options or {})},
                    "data": {"train": str(tmp_path / "train.json"), **data}, "output": {"dir": str(tmp_path / "run")}})
    return QATask(QATask.parse_options(cfg.task.options()), cfg)


# -- the official metric ---------------------------------------------------------------


def test_normalisation_and_scores_match_hand_computed_values():
    assert normalize_answer("  The Eiffel-Tower!  ") == "eiffeltower"
    assert normalize_answer("An apple, a day") == "apple day"
    assert exact_match_score("the Eiffel Tower.", "Eiffel tower") == 1.0
    # pred tokens [in, paris, france], gold [paris]: P = 1/3, R = 1, F1 = 2 * (1/3) / (4/3) = 0.5
    assert f1_score("in Paris, France", "Paris") == pytest.approx(0.5)
    # pred [big, red, dog], gold [red, dog, barks]: 2 common, P = R = 2/3
    assert f1_score("a big red dog", "red dog barks") == pytest.approx(2 / 3)
    assert f1_score("cat", "dog") == 0.0 and f1_score("", "dog") == 0.0
    scores = squad_scores(
        {"q1": "in Paris, France", "q2": "the dog", "q3": "blue"},
        {"q1": ["Paris", "Paris, France"], "q2": ["a cat", "dog"], "q3": ["red"]},
    )
    # q1: EM 0 (neither gold equals "in paris france"), F1 max(0.5, 2*(2/3)*1/(5/3)) = 0.8
    # q2: EM 1 via "dog"; q3: 0 / 0
    assert scores["exact_match"] == pytest.approx(100 * 1 / 3)
    assert scores["f1"] == pytest.approx(100 * (0.8 + 1.0 + 0.0) / 3)
    assert "has_answer_f1" not in scores


def test_unanswerable_questions_score_like_squad_v2():
    scores = squad_scores({"a": "", "b": "x", "c": "Rome"}, {"a": [], "b": [], "c": ["Rome"]})
    assert scores["exact_match"] == pytest.approx(200 / 3) and scores["f1"] == pytest.approx(200 / 3)
    assert scores["no_answer_exact_match"] == 50.0 and scores["has_answer_f1"] == 100.0
    with pytest.raises(ValueError, match="no prediction for question 'z'"):
        squad_scores({}, {"z": ["x"]})


# -- reading ----------------------------------------------------------------------------------


def test_reads_squad_v1_and_v2_and_fixes_offsets(tmp_path):
    ctx = "Rome is the capital of Italy. Rome has many churches."
    data = squad([[(ctx, [
        qa("q1", "What is the capital?", ctx, "Rome"),
        {"id": "q2", "question": "Churches?", "answers": [{"text": "churches", "answer_start": 3}]},  # off
        {"id": "q3", "question": "Who?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "Italy", "answer_start": 23}]},
    ])]])
    recs = read_squad(Path(write_json(tmp_path / "s.json", data)))
    assert [r["id"] for r in recs] == ["q1", "q2", "q3"]
    assert recs[1]["answers"][0]["answer_start"] == ctx.index("churches")
    assert recs[2]["answers"] == [] and recs[0]["title"] == "article 0" and recs[0]["article"] == 0
    hf = tmp_path / "s.jsonl"
    hf.write_text(json.dumps({"id": "x", "question": "q?", "context": ctx, "title": "t",
                              "answers": {"text": ["Italy"], "answer_start": [23]}}) + "\n", encoding="utf-8")
    assert read_squad(hf)[0]["answers"] == [{"text": "Italy", "answer_start": 23}]


def test_bad_squad_records_name_file_and_question(tmp_path):
    ctx = "Rome is old."
    missing = write_json(tmp_path / "m.json", squad([[(ctx, [{"id": "q1", "answers": []}])]]))
    with pytest.raises(DataError, match=r"m\.json: data\[0\]\.paragraphs\[0\]\.qas\[0\]: missing field 'question'"):
        read_squad(Path(missing))
    absent = write_json(tmp_path / "a.json", squad([[(ctx, [qa("q9", "Q?", ctx, None) | {
        "answers": [{"text": "Paris", "answer_start": 0}]}])]]))
    with pytest.raises(DataError, match=r"qas\[0\] \(id q9\): answer 'Paris' does not occur in the context"):
        read_squad(Path(absent))
    with pytest.raises(DataError, match="expected SQuAD JSON"):
        read_squad(Path(write_json(tmp_path / "l.json", [1, 2])))
    dup = write_json(tmp_path / "d.json", squad([[(ctx, [qa("q", "A?", ctx, "Rome"), qa("q", "B?", ctx, "old")])]]))
    with pytest.raises(DataError, match="unique"):
        read_squad(Path(dup))


def test_article_split_is_seeded_disjoint_and_configured(tmp_path):
    a, b = split_articles(20, 0.2, 0.1, seed=3), split_articles(20, 0.2, 0.1, seed=3)
    assert a == b and len(a["validation"]) == 4 and len(a["test"]) == 2 and len(a["train"]) == 14
    assert set.union(*a.values()) == set(range(20)) and not (a["train"] & a["validation"])
    assert split_articles(20, 0.2, 0.1, seed=4) != a
    ctxs = [f"Text number {i} is here." for i in range(10)]
    path = write_json(tmp_path / "train.json", squad([[(c, [qa(f"q{i}", "Q?", c, "number")])] for i, c in enumerate(ctxs)]))
    task = make_task(tmp_path, options={"dev_fraction": 0.3}, validation=path)
    train, dev = task.read(path, "train"), task.read(path, "validation")
    assert len(train) == 7 and len(dev) == 3 and not {r["id"] for r in train} & {r["id"] for r in dev}
    with pytest.raises(ConfigError, match=r"set data\.validation to the same file as data\.train"):
        make_task(tmp_path, options={"dev_fraction": 0.3}, validation=str(tmp_path / "other.json"))
    with pytest.raises(ConfigError, match=r"set task\.dev_fraction"):
        make_task(tmp_path, validation=path)
    with pytest.raises(ConfigError, match=r"task.doc_stride \(128\) must be smaller"):
        make_task(tmp_path, options={"doc_stride": 128}, max_length=128)
    assert make_task(tmp_path, options={"doc_stride": None}, max_length=256).doc_stride == 64


# -- windows, labels and post-processing -------------------------------------------------------


def test_char_span_to_token_span():
    offsets = [None, None, (0, 4), (5, 7), (8, 11), (11, 12), None]
    assert char_span_to_token_span(offsets, 5, 11) == (3, 4)
    assert char_span_to_token_span(offsets, 0, 4) == (2, 2)
    assert char_span_to_token_span(offsets, 9, 12) == (4, 5)  # inside a token: the token
    assert char_span_to_token_span([None, (20, 25), (26, 30)], 5, 9) is None  # not in this window


LONG_CONTEXT = " ".join(["the weather today is fine"] * 6 + ["rain will be great tomorrow"] + ["no snow"] * 8)


def encode_long(tiny_bert: str, tmp_path: Path, **options: Any) -> tuple[QATask, list[dict[str, Any]]]:
    task = make_task(tmp_path, tiny_bert, {"doc_stride": 8, "max_query_length": 8, **options}, max_length=32)
    recs = [{"id": "q1", "question": "what will be great", "context": LONG_CONTEXT, "title": "t", "article": 0,
             "answers": [{"text": "rain", "answer_start": LONG_CONTEXT.index("rain")}]}]
    task.prepare(recs)
    return task, task.encode(recs, task.load_tokenizer(), "validation")


def test_long_context_windows_label_the_answer_or_cls(tiny_bert, tmp_path):
    task, feats = encode_long(tiny_bert, tmp_path)
    tok = task.load_tokenizer()
    assert len(feats) >= 3 and all(len(f["input_ids"]) <= 32 for f in feats)
    with_answer = [f for f in feats if f["start_positions"] != f["cls_index"]]
    assert with_answer, "some window holds the answer"
    for f in with_answer:
        assert tok.decode(f["input_ids"][f["start_positions"] : f["end_positions"] + 1]) == "rain"
    for f in feats:
        if f not in with_answer:
            assert f["start_positions"] == f["end_positions"] == f["cls_index"] == 0
    covered = {o for f in feats for o in f["offsets"] if o is not None}  # the windows cover the context
    assert min(o[0] for o in covered) == 0 and max(o[1] for o in covered) == len(LONG_CONTEXT)
    batch = task.collate(feats, tok)
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions"}


def logits_for(feats: list[dict[str, Any]], spans: dict[int, tuple[int, int, float]]) -> dict[str, np.ndarray]:
    """Logits of 0 everywhere (-100 padding) except ``{feature: (start, end, value)}``."""
    width = max(len(f["input_ids"]) for f in feats)
    start, end = np.full((len(feats), width), -100.0), np.full((len(feats), width), -100.0)
    for i, f in enumerate(feats):
        start[i, : len(f["input_ids"])] = 0.0
        end[i, : len(f["input_ids"])] = 0.0
    for i, (s, e, v) in spans.items():
        start[i, s] += v
        end[i, e] += v
    return {"start_logits": start, "end_logits": end}


def test_postprocessing_picks_the_best_span_over_all_windows(tiny_bert, tmp_path):
    task, feats = encode_long(tiny_bert, tmp_path, max_answer_length=3)
    k = next(i for i, f in enumerate(feats) if f["start_positions"] != f["cls_index"])
    s = feats[k]["start_positions"]
    other = 0 if k else 1
    first_ctx = next(j for j, o in enumerate(feats[other]["offsets"]) if o is not None)
    out = logits_for(feats, {k: (s, s, 5.0), other: (first_ctx, first_ctx, 3.0)})
    assert task.postprocess(out, feats)["q1"]["text"] == "rain"
    assert task.compute_metrics(out, "validation", feats) == {"exact_match": 100.0, "f1": 100.0}
    # A longer span scores higher but exceeds max_answer_length (3 tokens): not chosen.
    c0 = next(j for j, o in enumerate(feats[0]["offsets"]) if o is not None)
    out = logits_for(feats, {0: (c0, c0 + 4, 9.0)})  # span (c0, c0+4) = 18 is 5 tokens long
    out["end_logits"][0, c0 + 1] += 1.0  # (c0, c0+1) = 10 beats (c0+2, c0+4) = 9
    best = task.postprocess(out, feats)["q1"]
    assert best["score"] == 10.0 and best["text"] == "the weather"
    assert task.predictions(out, feats, [{"id": "q1"}]) == [{"id": "q1", "answer": best["text"], "score": best["score"]}]


def test_null_answer_against_threshold(tiny_bert, tmp_path):
    task, feats = encode_long(tiny_bert, tmp_path, version_2_with_negative=True)
    assert task.allow_null
    k = next(i for i, f in enumerate(feats) if f["start_positions"] != f["cls_index"])
    s = feats[k]["start_positions"]
    spans = {i: (0, 0, 2.0) for i in range(len(feats))}  # null score 4 in every window
    spans[k] = (s, s, 1.5)  # span score 3 < null 4 (window k has null 0: min over windows is 0)
    out = logits_for(feats, spans)
    assert task.postprocess(out, feats)["q1"]["text"] == "rain"  # min null (0) < span (3)
    spans[k] = (0, 0, 2.0)
    out = logits_for(feats, spans)
    out["start_logits"][k, s] += 1.5
    out["end_logits"][k, s] += 1.4  # span 2.9 < null 4 -> null, unless the threshold favours spans
    assert task.postprocess(out, feats)["q1"]["text"] == ""
    task.options = QATask.Options.model_validate({"doc_stride": 8, "version_2_with_negative": True,
                                                "null_score_diff_threshold": 2.0, "max_query_length": 8})
    assert task.postprocess(out, feats)["q1"]["text"] == "rain"


def test_unanswerable_data_needs_v2(tmp_path):
    task = make_task(tmp_path, options={"version_2_with_negative": False})
    with pytest.raises(DataError, match="version_2_with_negative"):
        task.prepare([{"id": "a", "answers": []}])
    auto = make_task(tmp_path)
    auto.prepare([{"id": "a", "answers": []}])
    assert auto.allow_null and auto.state_dict() == {"version_2_with_negative": True}


# -- end to end ---------------------------------------------------------------------------------


def write_synthetic_squad(directory: Path, seed: int = 0) -> dict[str, str]:
    """Each answer is the word after 'rate' in a context of random words; some unanswerable."""
    rng = random.Random(seed)
    vocab = [w for w in WORDS if w not in ("rate", "star")]
    paths = {}
    for split, n in (("train", 24), ("validation", 8), ("test", 8)):
        articles = []
        for a in range(n):
            paras = []
            for p in range(2):
                words = [rng.choice(vocab) for _ in range(rng.randint(10, 40))]
                pos = rng.randrange(len(words) - 1)
                answer = rng.choice(["star", "good", "great", "fun"])
                words[pos : pos + 1] = ["rate", answer]
                ctx = " ".join(words)
                start = ctx.index(f"rate {answer}") + 5
                qas = [{"id": f"{split}-{a}-{p}", "question": "what will it rate",
                        "answers": [{"text": answer, "answer_start": start}]}]
                if p == 1 and a % 4 == 0:
                    qas.append({"id": f"{split}-{a}-{p}-x", "question": "what is the weather",
                                "answers": [], "is_impossible": True})
                paras.append((ctx, qas))
            articles.append(paras)
        paths[split] = write_json(directory / f"{split}.json", squad(articles))
    return paths


def test_tiny_qa_run_learns_and_writes_predictions(tf_run, tiny_bert, tmp_path):
    (tmp_path / "data").mkdir()
    raw = yaml.safe_load((CONFIGS / "qa-tiny.yaml").read_text())
    raw["task"] = {k: v for k, v in raw["task"].items() if k not in ("dev_fraction", "split_seed")}
    raw["data"] = {k: v for k, v in raw["data"].items() if not k.startswith("max_") or k == "max_length"}
    data = write_synthetic_squad(tmp_path / "data")
    config = deep_merge(raw, {"model": {"name_or_path": tiny_bert}, "data": data,
                              "output": {"dir": str(tmp_path / "run")}})
    results, run_dir = tf_run(config)
    assert results["status"] == "completed" and results["steps"] == 40
    losses = [x["loss"] for x in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
              if x["split"] == "train"]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    test = results["test"]
    assert {"exact_match", "f1", "has_answer_f1", "no_answer_f1"} <= set(test)
    assert 0.0 <= test["exact_match"] <= test["f1"] <= 100.0
    preds = json.loads((run_dir / "reports" / "test_predictions.json").read_text())
    assert len(preds) == 8 * 2 + 2  # every question answered (possibly with "")
    assert json.loads((run_dir / "model" / "task_state.json").read_text()) == {"version_2_with_negative": True}


# -- real data ------------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_xquad_reads_and_splits_by_article():
    if not XQUAD.is_file():
        pytest.skip(f"shared data not found at {XQUAD}")
    recs = read_squad(XQUAD)
    assert len(recs) == 1190 and len({r["article"] for r in recs}) == 48
    assert all(r["context"][a["answer_start"]:].startswith(a["text"]) for r in recs for a in r["answers"])
    parts = split_articles(48, 0.2, 0.2, seed=0)
    assert sorted(len(v) for v in parts.values()) == [10, 10, 28]
