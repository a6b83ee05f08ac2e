"""Generative QA (a causal LM writes the answer) and causal_lm's task.truncate_field."""

from __future__ import annotations

import json
import logging

import pytest
from transformers import AutoTokenizer

from tuneforge.config import validate
from tuneforge.errors import ConfigError, DataError
from tuneforge.plugins.causal_lm import CausalLMTask
from tuneforge.plugins.generative_qa import GenerativeQATask
from tuneforge.plugins.qa import QATask

pytestmark = pytest.mark.usefixtures("tf_single_thread")


def squad_file(path, n_articles: int = 10, unanswerable: bool = False):
    data = []
    for a in range(n_articles):
        context = f"The capital of land{a} is city{a}. It lies on the river{a}."
        qas = [{"id": f"{a}-0", "question": f"What is the capital of land{a}?",
                "answers": [{"text": f"city{a}", "answer_start": context.index(f"city{a}")},
                            {"text": f"city{a}", "answer_start": context.index(f"city{a}")}]},
               {"id": f"{a}-1", "question": f"Which river is in land{a}?",
                "answers": [{"text": f"the river{a}", "answer_start": context.index(f"the river{a}")},
                            {"text": f"river{a}", "answer_start": context.index(f"river{a}")}]}]
        if unanswerable and a == 0:
            qas.append({"id": "0-2", "question": "Who?", "answers": [], "is_impossible": True})
        data.append({"title": f"Land {a}", "paragraphs": [{"context": context, "qas": qas}]})
    path.write_text(json.dumps({"version": "1.1", "data": data}), encoding="utf-8")
    return str(path)


def config(model: str, path: str, task: dict, **data) -> object:
    return validate({"model": {"name_or_path": model}, "task": task,
                     "data": {"train": path, "validation": path, "test": path, "max_length": 96, **data}})


def make(cls, cfg):
    return cls(cls.parse_options(cfg.task.options()), cfg)


def test_records_answers_and_the_qa_task_article_split(tiny_llama, tmp_path):
    path = squad_file(tmp_path / "s.json")
    split = {"dev_fraction": 0.2, "test_fraction": 0.2, "split_seed": 3}
    gen = make(GenerativeQATask, config(tiny_llama, path, {"name": "generative_qa", **split}))
    qa = make(QATask, config(tiny_llama, path, {"name": "qa", **split}))
    for name in ("train", "validation", "test"):
        assert [r["id"] for r in gen.read(path, name)] == [r["id"] for r in qa.read(path, name)]
    test = gen.read(path, "test")
    assert len(test) == 4 and len(gen.read(path, "train")) == 12
    river = next(r for r in test if r["id"].endswith("-1"))
    assert river["answer"] == river["answer_texts"][0] and river["answer_texts"][1] == river["answer"][4:]
    capital = next(r for r in test if r["id"].endswith("-0"))
    assert capital["answer_texts"] == [capital["answer"]]  # repeated gold answers once
    prompt = gen.formatted(capital, "x")["prompt"]
    assert prompt.startswith("Answer the question") and capital["context"] in prompt and capital["question"] in prompt
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    [feat] = gen.encode([capital], tokenizer, "test")
    assert feat["references"] == capital["answer_texts"]
    assert gen.options.generation.scorers == ["squad"] and gen.primary_metric == "squad_f1"
    assert gen.metric_greater_is_better("squad_f1") and gen.greater_is_better


def test_bad_splits_and_unanswerable_questions_are_refused(tiny_llama, tmp_path):
    path = squad_file(tmp_path / "s.json", unanswerable=True)
    with pytest.raises(ConfigError, match=r"data\.test is the same file as data.train; set task.test_fraction"):
        make(GenerativeQATask, config(tiny_llama, path, {"name": "generative_qa", "dev_fraction": 0.2}))
    other = squad_file(tmp_path / "o.json")
    with pytest.raises(ConfigError, match=r"task\.test_fraction holds out articles of data.train"):
        make(GenerativeQATask, config(tiny_llama, path, {"name": "generative_qa", "test_fraction": 0.2},
                                      validation=other, test=other))
    task = make(GenerativeQATask, config(tiny_llama, path, {"name": "generative_qa"}, validation=other, test=other))
    with pytest.raises(DataError, match="question 0-2 has no answer"):
        task.read(path, "train")


def test_truncate_field_cuts_the_passage_and_keeps_the_reply(tiny_llama, caplog):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    cfg = validate({"model": {"name_or_path": tiny_llama},
                    "task": {"name": "causal_lm", "prompt_format": "Q: {question}\nPassage: {context}",
                             "response_field": "answer", "truncate_field": "context"},
                    "data": {"train": "t.jsonl", "max_length": 40}})
    task = make(CausalLMTask, cfg)
    long = {"question": "where?", "context": "word " * 200, "answer": "here it is"}
    short = {"question": "where?", "context": "word", "answer": "here it is"}
    with caplog.at_level(logging.INFO):
        feats = task.encode([long, short], tokenizer, "train")
    assert "1 of 2 examples had their 'context' cut to fit data.max_length=40" in caplog.text
    assert "truncated to" not in caplog.text  # nothing was cut from the end
    assert len(feats) == 2 and 36 <= len(feats[0]["input_ids"]) <= 40
    reply = lambda f: tokenizer.decode([t for t in f["labels"] if t != -100])  # noqa: E731
    assert reply(feats[0]) == reply(feats[1]) and "here it is" in reply(feats[0])
    assert "where?" in tokenizer.decode(feats[0]["input_ids"])
    [pred] = task.encode([{"question": "where?", "context": "word " * 200}], tokenizer, "predict")
    assert pred["prompt_length"] <= 40 and tokenizer.decode(pred["input_ids"]).rstrip().endswith("<|assistant|>")

    plain = make(CausalLMTask, validate({**cfg.model_dump(mode="json"), "task": {
        "name": "causal_lm", "prompt_format": "Q: {question}\nPassage: {context}", "response_field": "answer"}}))
    [cut] = plain.encode([long], tokenizer, "validation")  # without it the reply is lost from the end
    assert "here it is" not in reply(cut)

    bad = make(CausalLMTask, validate({**cfg.model_dump(mode="json"), "task": {
        "name": "causal_lm", "prompt_format": "{question} {n}", "response_field": "answer", "truncate_field": "n"}}))
    with pytest.raises(DataError, match=r"task\.truncate_field 'n' must name a text field"):
        bad.encode([{"question": "q " * 50, "n": 3, "answer": "a"}], tokenizer, "train")
    with pytest.raises(ConfigError, match=r"task\.truncate_field cuts a field of prompt/response records"):
        make(CausalLMTask, validate({**cfg.model_dump(mode="json"), "task": {
            "name": "causal_lm", "input_format": "chat", "truncate_field": "context"}}))


def test_generative_qa_run_scores_squad_em_f1(tf_run, tiny_llama, tmp_path):
    path = squad_file(tmp_path / "s.json")
    results, run_dir = tf_run({
        "model": {"name_or_path": tiny_llama},
        "task": {"name": "generative_qa", "dev_fraction": 0.2, "test_fraction": 0.2, "max_new_tokens": 4},
        "data": {"train": path, "validation": path, "test": path, "max_length": 256},
        "training": {"max_steps": 4, "batch_size": 4, "lr": 1e-3, "seed": 0},
        "evaluation": {"strategy": "steps", "every_n_steps": 4},
        "output": {"dir": str(tmp_path / "run"), "keep_last": 1},
    })
    assert results["metric"] == "squad_f1"
    for split in ("validation", "test"):
        assert {"squad_exact_match", "squad_f1", "perplexity"} <= set(results[split])
        assert 0.0 <= results[split]["squad_f1"] <= 100.0
    rows = [json.loads(x) for x in (run_dir / "reports" / "test_generations.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(set(r["score"]) == {"squad_exact_match", "squad_f1"} for r in rows)
