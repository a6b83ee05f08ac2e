"""Reading records: every record remembers its file and line, through sampling and splitting."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import pytest

from tuneforge.builders import load_records
from tuneforge.config import validate
from tuneforge.data import Record, read_jsonl, read_records, record_origin, require_fields
from tuneforge.errors import DataError
from tuneforge.preflight import preflight


def test_records_know_their_file_and_line(tmp_path: Path) -> None:
    csv_path = tmp_path / "a.csv"
    csv_path.write_text('text,label\nfirst,x\n"two\nlines",y\nthird,x\n', encoding="utf-8")
    rows = read_records(csv_path)
    assert [r.origin for r in rows] == [f"{csv_path}, line 2", f"{csv_path}, line 4", f"{csv_path}, line 5"]
    assert rows[1] == {"text": "two\nlines", "label": "y"} and isinstance(rows[1], dict)
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"a": 1}\n\n{"a": 2}\n', encoding="utf-8")
    assert [r.origin for r in read_records(jsonl)] == [f"{jsonl}, line 1", f"{jsonl}, line 3"]
    js = tmp_path / "a.json"
    js.write_text(json.dumps({"data": [{"a": 1}, {"a": 2}]}), encoding="utf-8")
    assert record_origin(read_records(js)[1], "ignored", 0) == f"{js}, record 2"
    assert record_origin({"a": 1}, "train split", 4) == "train split, record 5"  # a plain dict
    rec = Record({"a": 1}, "f.csv, line 9")
    for clone in (pickle.loads(pickle.dumps(rec)), copy.deepcopy(rec)):
        assert clone == rec and clone.origin == "f.csv, line 9"


def test_read_jsonl_names_the_bad_line_or_skips_it(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1}\n\n[1, 2]\n{"step": 2}\n{"step": 3, "lo', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}, line 3: each line must be a JSON object, got list"):
        read_jsonl(path)
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}, line 3: not valid JSON"):
        read_jsonl(path)
    kept = read_jsonl(path, skip_invalid=True)  # a log whose last line a kill cut short
    assert kept == [{"step": 1}, {"step": 2}] and kept[1].origin == f"{path}, line 2"
    path.write_bytes(b'{"a": "\xff"}\n')
    with pytest.raises(DataError, match="not UTF-8 text"):
        read_jsonl(path)
    with pytest.raises(DataError, match="does not exist"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_errors_point_at_the_line_after_shuffled_splits(tiny_classification_config, tmp_path: Path) -> None:
    """validation_fraction shuffles records into two splits; a bad record is still named by its line."""
    lines = ["text,label"] + [f"movie {i},pos" if i % 2 else f"song {i},neg" for i in range(40)]
    lines[27] = "song broken,"  # line 28 of the file: an empty label is fine for csv ...
    path = tmp_path / "train.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    raw = copy.deepcopy(tiny_classification_config)
    raw["data"] = {"train": str(path), "validation_fraction": 0.25, "max_length": 16}
    raw["task"]["labels"] = ["neg", "pos"]
    config = validate(raw)
    task = preflight(config, check_output=False).make_task()
    records = load_records(config, task)
    bad = [split for split, recs in records.items() if any(r["text"] == "song broken" for r in recs)]
    assert len(bad) == 1
    from transformers import AutoTokenizer


    tokenizer = AutoTokenizer.from_pretrained(tiny_classification_config["model"]["name_or_path"])
    with pytest.raises(DataError, match=rf"{path}, line 28: label '' is not one of the training labels"):
        task.encode(records[bad[0]], tokenizer, bad[0])
    # ... and a missing field names the line too
    del records[bad[0]][[r["text"] for r in records[bad[0]]].index("song broken")]["label"]
    with pytest.raises(DataError, match=rf"{path}, line 28: missing field 'label'"):
        require_fields(records[bad[0]], ["text", "label"], "train split")
