"""The built-in classification task: labels, pairs, errors, metrics and reports."""

import json

import numpy as np
import pytest

from tuneforge.config import validate
from tuneforge.errors import DataError
from tuneforge.plugins.classification import ClassificationTask, label_metrics


def make_task(tiny_bert, **options):
    cfg = validate({"model": {"name_or_path": tiny_bert}, "task": {"name": "classification", **options},
                    "data": {"train": "t.csv", "max_length": 16}})
    return ClassificationTask(ClassificationTask.parse_options(cfg.task.options()), cfg)


def test_labels_from_data_sort_numbers_numerically(tiny_bert):
    task = make_task(tiny_bert)
    task.prepare([{"text": "a", "label": v} for v in ("10", "2", "1", 2)])
    assert task.labels == ["1", "2", "10"]
    task.prepare([{"text": "a", "label": v} for v in ("neg", "pos")])
    assert task.labels == ["1", "2", "10"]  # prepare keeps labels once learned (resume, reload)


def test_labels_from_config_fix_the_order(tiny_bert):
    task = make_task(tiny_bert, labels=["pos", "neg"])
    task.prepare([{"text": "a", "label": "neg"}, {"text": "b", "label": "pos"}])
    assert task.labels == ["pos", "neg"]


def test_text_pairs_and_truncation(tiny_bert):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    task = make_task(tiny_bert, text_pair_field="b", text_field="a")
    recs = [{"a": "this movie", "b": "is good " * 20, "label": "x"}, {"a": "a book", "b": "bad", "label": "y"}]
    task.prepare(recs)
    feats = task.encode(recs, tok, "train")
    assert len(feats[0]["input_ids"]) == 16  # truncated to data.max_length
    assert 1 in feats[1]["token_type_ids"]  # second segment present
    assert [f["labels"] for f in feats] == [0, 1]


def test_unknown_label_and_missing_field_name_record(tiny_bert):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    task = make_task(tiny_bert)
    task.prepare([{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}])
    with pytest.raises(DataError, match=r"record 2: label 'meh' is not one of the training labels"):
        task.encode([{"text": "a", "label": "pos"}, {"text": "b", "label": "meh"}], tok, "validation")
    with pytest.raises(DataError, match=r"record 1: missing field 'text' \(fields present: label, txt\)"):
        task.encode([{"txt": "a", "label": "pos"}], tok, "validation")


def test_metrics_match_hand_computed():
    preds, labels = np.array([0, 1, 1, 2, 2, 2]), np.array([0, 1, 2, 2, 2, 0])
    m = label_metrics(preds, labels)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # per-class F1: class0 P=1 R=.5 -> 2/3; class1 P=.5 R=1 -> 2/3; class2 P=2/3 R=2/3 -> 2/3
    assert m["macro_f1"] == pytest.approx(2 / 3)
    assert m["micro_f1"] == pytest.approx(4 / 6)


def test_reports_written_after_a_run(tf_run, tiny_classification_config):
    _, run_dir = tf_run(tiny_classification_config)
    report = json.loads((run_dir / "reports" / "test_classification_report.json").read_text())
    assert report["labels"] == ["neg", "pos"]
    cm = np.array(report["confusion_matrix"])
    assert cm.shape == (2, 2) and cm.sum() == 32
    assert "precision" in (run_dir / "reports" / "test_classification_report.txt").read_text()
    assert json.loads((run_dir / "task_state.json").read_text()) == {"labels": ["neg", "pos"]}
