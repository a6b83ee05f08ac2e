"""NER task: CoNLL/jsonl parsing, tag schemes, sub-word alignment, windowing, seqeval
metrics, and a tiny end-to-end run."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneforge.config import validate
from tuneforge.errors import ConfigError, DataError
from tuneforge.plugins.ner import NERTask, detect_scheme, iob2_to_bioes, parse_tag, read_ner_file, to_iob2
from tuneforge.testing.pytest_plugin import deep_merge
from tuneforge.text import IGNORE_INDEX, first_subtoken_labels, window_owners, word_windows

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
WNUT = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ner" / "wnut17"


def make_task(tmp_path: Path, model: str = "unused", options: dict[str, Any] | None = None, **data: Any) -> NERTask:
    cfg = validate({"model": {"name_or_path": model}, "task": {"name": "ner", **(options or {})},
                    "data": {"train": "unused.conll", **data}, "output": {"dir": str(tmp_path / "run")}})
    return NERTask(NERTask.parse_options(cfg.task.options()), cfg)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def opts(**kw: Any) -> Any:
    return NERTask.parse_options(kw)


# -- parsing --------------------------------------------------------------------------


def test_conll_separators_docstart_and_tag_column(tmp_path):
    text = (
        "-DOCSTART- -X- -X- O\n\n"
        "EU NNP B-ORG\nrejects VBZ O\n\t\n"  # a TAB-only line separates sentences (as in wnut17)
        "German JJ B-MISC\ncall NN O\n   \n"  # so does a spaces-only line
        "-DOCSTART- -X- -X- O\n"
        "Peter NNP B-PER\nBlackburn NNP I-PER\n"  # no trailing blank line
    )
    path = write(tmp_path / "a.conll", text)
    sents = read_ner_file(path, opts())
    assert [s["tokens"] for s in sents] == [["EU", "rejects"], ["German", "call"], ["Peter", "Blackburn"]]
    assert [s["tags"] for s in sents] == [["B-ORG", "O"], ["B-MISC", "O"], ["B-PER", "I-PER"]]
    assert sents[2]["lines"] == [10, 11] and sents[0]["source"] == str(path)
    pos = read_ner_file(path, opts(tag_column=1), with_tags=False)  # tags not read
    assert "tags" not in pos[0] and pos[0]["tokens"] == ["EU", "rejects"]


def test_conll_bad_tag_and_missing_column_name_file_and_line(tmp_path):
    path = write(tmp_path / "bad.conll", "Paris\tB-LOC\nis\tO\n\nnice\tX-LOC\n")
    with pytest.raises(DataError, match=r"bad\.conll, line 4: 'X-LOC' is not a tag"):
        read_ner_file(path, opts())
    path = write(tmp_path / "cols.conll", "Paris B-LOC\nis\n")
    with pytest.raises(DataError, match=r"cols\.conll, line 2: .*found 1 column"):
        read_ner_file(path, opts(tag_column=1))
    with pytest.raises(DataError, match="no sentences"):
        read_ner_file(write(tmp_path / "empty.conll", "\n\t\n"), opts())


def test_tag_schemes_convert_to_iob2(tmp_path):
    bioes = write(tmp_path / "b.conll", "New B-LOC\nYork E-LOC\nand O\nBob S-PER\nLee S-PER\n")
    assert read_ner_file(bioes, opts())[0]["tags"] == ["B-LOC", "I-LOC", "O", "B-PER", "B-PER"]
    iob1 = write(tmp_path / "i.conll", "Bob I-PER\nAnn I-PER\nLee B-PER\nin O\nRome I-LOC\n")
    assert read_ner_file(iob1, opts())[0]["tags"] == ["B-PER", "I-PER", "B-PER", "O", "B-LOC"]
    bilou = write(tmp_path / "u.conll", "New B-LOC\nYork L-LOC\nBob U-PER\n")
    assert read_ner_file(bilou, opts())[0]["tags"] == ["B-LOC", "I-LOC", "B-PER"]
    assert detect_scheme([[parse_tag(t) for t in ["B-X", "I-X", "O"]]]) == "iob2"  # type: ignore[misc]
    assert detect_scheme([[parse_tag(t) for t in ["O", "I-X"]]]) == "iob1"  # type: ignore[misc]
    assert detect_scheme([[parse_tag(t) for t in ["S-X"]]]) == "bioes"  # type: ignore[misc]


def test_declared_scheme_is_enforced_with_line(tmp_path):
    iob1 = write(tmp_path / "i.conll", "x O\n\nBob O\nLee I-PER\n")
    with pytest.raises(DataError, match=r"i\.conll, line 4: 'I-PER' does not continue.*tag_scheme: iob1"):
        read_ner_file(iob1, opts(tag_scheme="iob2"))
    broken = write(tmp_path / "b.conll", "New B-LOC\nYork O\n")
    with pytest.raises(DataError, match=r"b\.conll, line 1: 'B-LOC' is not followed by I-LOC or E-LOC"):
        read_ner_file(broken, opts(tag_scheme="bioes"))
    with pytest.raises(DataError, match="line 2: 'E-LOC' is a BIOES tag"):
        read_ner_file(write(tmp_path / "m.conll", "a B-LOC\nb E-LOC\n"), opts(tag_scheme="iob1"))


def test_iob2_to_bioes_and_back():
    iob2 = ["B-PER", "I-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"]
    bioes = iob2_to_bioes(iob2)
    assert bioes == ["B-PER", "I-PER", "E-PER", "O", "S-LOC", "B-LOC", "E-LOC"]
    assert to_iob2([parse_tag(t) for t in bioes], "bioes") == iob2  # type: ignore[misc]


def test_jsonl_reader_and_errors(tmp_path):
    good = write(tmp_path / "a.jsonl", json.dumps({"tokens": ["Bob", "ran"], "tags": ["B-PER", "O"]}) + "\n\n"
                 + json.dumps({"tokens": ["in", "Rome"], "tags": ["O", "B-LOC"]}) + "\n")
    recs = read_ner_file(good, opts())
    assert [r["tags"] for r in recs] == [["B-PER", "O"], ["O", "B-LOC"]] and recs[1]["lines"] == [3, 3]
    bad = write(tmp_path / "b.jsonl", json.dumps({"tokens": ["Bob", "ran"], "tags": ["B-PER"]}) + "\n")
    with pytest.raises(DataError, match=r"b\.jsonl, line 1: 2 tokens but 1 tags"):
        read_ner_file(bad, opts())
    missing = write(tmp_path / "c.jsonl", json.dumps({"words": ["Bob"], "tags": ["O"]}) + "\n")
    with pytest.raises(DataError, match=r"c\.jsonl, line 1: field 'tokens' must be a list of strings"):
        read_ner_file(missing, opts())
    tag = write(tmp_path / "d.jsonl", json.dumps({"tokens": ["Bob"], "tags": ["PER"]}) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl, line 1, token 1: 'PER' is not a tag"):
        read_ner_file(tag, opts())


def test_unknown_entity_type_in_dev_names_file_line_and_tag(tmp_path):
    train = write(tmp_path / "train.conll", "Bob B-PER\nran O\n")
    dev = write(tmp_path / "dev.conll", "Bob B-PER\n\nin O\nRome B-LOC\n")
    task = make_task(tmp_path, train=str(train), validation=str(dev))
    task.prepare(task.read(str(train), "train"))
    assert task.labels == ["O", "B-PER", "I-PER"]  # I- of a seen type is a label even if unseen
    with pytest.raises(DataError, match=r"dev\.conll, line 4: tag 'B-LOC': entity type 'LOC' is not one of the "
                                        r"training entity types \['PER'\]; add it to task\.entity_types"):
        task.check_types(task.read(str(dev), "validation"))
    only_o = write(tmp_path / "o.conll", "a O\n")
    with pytest.raises(DataError, match=r"o\.conll: task 'ner' needs at least 1 entity type\(s\) in the training "
                                        "data, found none"):
        make_task(tmp_path, train=str(only_o)).prepare(read_ner_file(only_o, opts()))


# -- alignment and windows ------------------------------------------------------------------


def test_first_subtoken_alignment_on_a_real_tokenizer(tiny_bert, tmp_path):
    task = make_task(tmp_path, tiny_bert, max_length=64)
    task.entity_types = ["LOC", "PER"]
    tok = task.load_tokenizer()
    rec = {"tokens": ["zorb", "is", "near", "qix"], "tags": ["B-PER", "O", "O", "B-LOC"], "lines": [1, 2, 3, 4],
           "source": "x"}
    (feat,) = task.encode([rec], tok, "train")
    pieces = tok.convert_ids_to_tokens(feat["input_ids"])
    assert pieces == ["[CLS]", "z", "##o", "##r", "##b", "is", "near", "q", "##i", "##x", "[SEP]"]
    ids = {name: i for i, name in enumerate(task.labels)}
    assert feat["labels"] == [-100, ids["B-PER"], -100, -100, -100, ids["O"], ids["O"], ids["B-LOC"], -100, -100, -100]
    assert feat["word_index"] == [-1, 0, -1, -1, -1, 1, 2, 3, -1, -1, -1]
    batch = task.collate([feat], tok)
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}  # metadata not batched
    assert first_subtoken_labels([None, 0, 0, 1, None], [5, 7]) == [IGNORE_INDEX, 5, IGNORE_INDEX, 7, IGNORE_INDEX]


def test_word_windows_examples():
    assert word_windows([1, 1, 1], budget=5, stride=2) == [(0, 3)]
    wins = word_windows([2, 2, 2, 2, 2], budget=4, stride=2)
    assert wins == [(0, 2), (1, 3), (2, 4), (3, 5)]
    assert word_windows([1, 9, 1], budget=4, stride=1) == [(0, 1), (1, 2), (2, 3)]  # the long word alone
    assert window_owners([(0, 4), (2, 6)], 6) == [0, 0, 0, 1, 1, 1]


@settings(max_examples=200, deadline=None)
@given(counts=st.lists(st.integers(1, 6), min_size=1, max_size=60), budget=st.integers(1, 20), stride=st.integers(0, 10))
def test_word_windows_cover_every_word_within_budget(counts, budget, stride):
    stride = min(stride, budget - 1) if budget > 1 else 0
    wins = word_windows(counts, budget, stride)
    owners = window_owners(wins, len(counts))
    assert wins[0][0] == 0 and wins[-1][1] == len(counts)
    for (s0, e0), (s1, e1) in itertools.pairwise(wins):
        assert s0 < s1 <= e0 < e1  # progress, contiguous coverage
        assert sum(counts[s1:e0]) <= stride  # overlap within the stride
    for s, e in wins:
        assert e - s == 1 or sum(counts[s:e]) <= budget
    assert all(wins[k][0] <= w < wins[k][1] for w, k in enumerate(owners))


def test_long_sentences_are_windowed_without_losing_a_token(tiny_bert, tmp_path):
    rng = random.Random(0)
    words = ["movie", "zorb", "great", "qixlo", "today", "the", "snow", "blarg"]
    records = []
    for n in (5, 37, 60):
        toks = [rng.choice(words) for _ in range(n)]
        tags = ["B-X" if t in ("movie", "zorb") else "O" for t in toks]
        records.append({"tokens": toks, "tags": tags, "lines": list(range(n)), "source": "s"})
    task = make_task(tmp_path, tiny_bert, {"stride": 4}, max_length=16)
    task.entity_types = ["X"]
    tok = task.load_tokenizer()
    feats = task.encode(records, tok, "validation")
    assert len(feats) > len(records)  # the long ones were split
    assert all(len(f["input_ids"]) <= 16 for f in feats)
    for i, rec in enumerate(records):  # each word owned by exactly one window position
        owned = sorted(w for f in feats if f["sentence"] == i for w in f["word_index"] if w >= 0)
        assert owned == list(range(len(rec["tokens"])))
    # Labels as predictions: merging the windows gives back every gold tag.
    width = max(len(f["input_ids"]) for f in feats)
    preds = np.full((len(feats), width), -100)
    for k, f in enumerate(feats):
        preds[k, : len(f["labels"])] = [max(x, 0) for x in f["labels"]]
    merged = task.merge_predictions(preds, feats)
    assert merged == [r["tags"] for r in records]
    assert task.compute_metrics({"predictions": preds}, "validation", feats)["f1"] == 1.0


def test_stride_must_fit_the_window(tiny_bert, tmp_path):
    task = make_task(tmp_path, tiny_bert, {"stride": 14}, max_length=16)
    task.entity_types = ["X"]
    with pytest.raises(ConfigError, match=r"task.stride \(14\) must be smaller"):
        task.encode([{"tokens": ["a"], "tags": ["O"], "lines": [1], "source": "s"}], task.load_tokenizer(), "train")


# -- metrics ------------------------------------------------------------------------------


def test_entity_metrics_match_hand_computed_values(tmp_path):
    task = make_task(tmp_path)
    task.entity_types = ["LOC", "ORG", "PER"]
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-PER"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "O", "B-LOC"]]
    # gold entities: PER(0-1), LOC(3), ORG(0), PER(2) = 4; predicted: PER(0-1), ORG(0), LOC(2) = 3; correct 2
    m = task.scores(gold, pred)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 4)
    assert m["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert m["f1_ORG"] == 1.0 and m["f1_LOC"] == 0.0 and m["f1_PER"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(5 / 7)


def test_conlleval_and_strict_modes_differ_on_ill_formed_predictions(tmp_path):
    gold, pred = [["B-PER", "I-PER", "O"]], [["I-PER", "I-PER", "O"]]
    lenient = make_task(tmp_path)
    lenient.entity_types = ["PER"]
    assert lenient.scores(gold, pred)["f1"] == 1.0  # CoNLL eval: an I- after O starts an entity
    strict = make_task(tmp_path, options={"seqeval_mode": "strict"})
    strict.entity_types = ["PER"]
    assert strict.scores(gold, pred)["f1"] == 0.0
    bioes = make_task(tmp_path, options={"seqeval_mode": "strict", "label_scheme": "bioes"})
    bioes.entity_types = ["PER"]
    assert bioes.labels == ["O", "B-PER", "I-PER", "E-PER", "S-PER"]
    assert bioes.scores([["B-PER", "E-PER", "S-PER"]], [["B-PER", "E-PER", "O"]])["recall"] == 0.5


# -- end to end -----------------------------------------------------------------------------


def write_synthetic_ner(directory: Path, seed: int = 0) -> dict[str, str]:
    """Sentences where item words (after an optional adjective) and time words are entities."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    items, adjs, times = ["movie", "film", "book", "song"], ["great", "good", "awful"], ["today", "tomorrow"]
    filler = ["i", "will", "rate", "this", "with", "you", "near", "me", "please", "the", "play", "find"]
    paths = {}
    for split, n in (("train", 96), ("validation", 24), ("test", 24)):
        lines = []
        for _ in range(n):
            toks, tags = [], []
            for _ in range(rng.randint(4, 18)):
                r = rng.random()
                if r < 0.2:
                    if rng.random() < 0.5:
                        toks.append(rng.choice(adjs)), tags.append("B-item")
                        toks.append(rng.choice(items)), tags.append("I-item")
                    else:
                        toks.append(rng.choice(items)), tags.append("B-item")
                elif r < 0.3:
                    toks.append(rng.choice(times)), tags.append("B-time")
                else:
                    toks.append(rng.choice(filler)), tags.append("O")
            lines += [f"{t}\t{g}" for t, g in zip(toks, tags)] + ["\t" if rng.random() < 0.5 else ""]
        paths[split] = str(write(directory / f"{split}.conll", "\n".join(lines) + "\n"))
    return paths


def test_tiny_ner_run_learns_and_writes_reports(tf_run, tiny_bert, tmp_path):
    raw = yaml.safe_load((CONFIGS / "ner-tiny.yaml").read_text())
    data = write_synthetic_ner(tmp_path / "data")
    config = deep_merge(raw, {"model": {"name_or_path": tiny_bert}, "data": data,
                              "output": {"dir": str(tmp_path / "run")}})
    results, run_dir = tf_run(config)
    assert results["status"] == "completed" and results["steps"] == 40
    losses = [x["loss"] for x in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
              if x["split"] == "train"]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    test = results["test"]
    assert {"precision", "recall", "f1", "f1_item", "f1_time", "accuracy"} <= set(test)
    assert test["f1"] > 0.5
    report = (run_dir / "reports" / "test_seqeval_report.txt").read_text()
    assert "item" in report and "time" in report and "micro avg" in report
    conll = (run_dir / "reports" / "test_predictions.conll").read_text().strip().split("\n\n")
    assert len(conll) == 24
    state = json.loads((run_dir / "model" / "task_state.json").read_text())
    assert state["labels"] == ["O", "B-item", "I-item", "B-time", "I-time"]


# -- real data ------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_wnut17_files_parse_with_published_counts():
    if not WNUT.is_dir():
        pytest.skip(f"shared data not found at {WNUT}")
    from seqeval.metrics.sequence_labeling import get_entities

    counts = {}
    for name in ("wnut17train.conll", "emerging.dev.conll", "emerging.test.annotated"):
        recs = read_ner_file(WNUT / name, opts())
        counts[name] = (len(recs), sum(len(r["tokens"]) for r in recs), sum(len(get_entities(r["tags"])) for r in recs))
    assert counts == {
        "wnut17train.conll": (3394, 62730, 1975),
        "emerging.dev.conll": (1009, 15733, 836),
        "emerging.test.annotated": (1287, 23394, 1079),
    }
