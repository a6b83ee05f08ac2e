"""The study library: entries, storage (directory and database), the CLI, reliability."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest

from tuneforge import __version__
from tuneforge.cli import main
from tuneforge.search.library import (
    STUDY_ATTR,
    DatabaseLibrary,
    DirectoryLibrary,
    LibraryEntry,
    entry_from_study,
    mean_input_words,
    new_id,
    open_library,
    records_train_runs,
)


def make_entry(name: str = "sst2", *, direction: str = "maximize", trials=None, task: str = "classification",
               base=None) -> LibraryEntry:
    trials = trials if trials is not None else [
        {"number": 0, "state": "COMPLETE", "params": {"training.lr": 1e-4}, "value": 0.8, "curve": [[10, 0.7]]},
        {"number": 1, "state": "COMPLETE", "params": {"training.lr": 1e-3}, "value": 0.6, "curve": []},
    ]
    done = [t for t in trials if t["value"] is not None]
    best = max(done, key=lambda t: t["value"] if direction == "maximize" else -t["value"]) if done else None
    return LibraryEntry(id=new_id(name), kind="study", source=f"sqlite:///x.db#{name}",
                        meta={"task": task, "model": "m", "n_train": 100}, metric="validation.accuracy",
                        direction=direction, base=base or {"training.batch_size": 32, "training.max_steps": 100},
                        trials=trials, best={"params": best["params"], "value": best["value"]} if best else None)


def make_stored_study(study_dir: Path, name: str = "snips", values=(0.5, 0.9, 0.7)) -> None:
    study_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(storage=f"sqlite:///{study_dir / 'study.db'}", study_name=name, direction="maximize")
    study.set_user_attr("tuneforge", {"objectives": [["validation.accuracy", "maximize"]]})
    study.set_user_attr(STUDY_ATTR, {"meta": {"task": "classification", "model": "tiny", "n_train": 64},
                                     "base": {"training.batch_size": 16, "training.max_steps": 40}})
    for value in values:
        trial = study.ask({"training.lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)})
        trial.report(value / 2, 20)
        trial.set_user_attr("steps", 40)
        study.tell(trial, value)
    pruned = study.ask({"training.lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)})
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)


@pytest.mark.parametrize("kind", ["dir", "sqlite"])
def test_add_list_show_remove_round_trip(kind, tmp_path):
    lib = open_library(tmp_path / "lib" if kind == "dir" else f"sqlite:///{tmp_path / 'lib.db'}")
    assert isinstance(lib, DirectoryLibrary if kind == "dir" else DatabaseLibrary)
    entry = make_entry()
    lib.add(entry)
    (got,) = lib.entries()
    assert got == entry
    assert lib.get(entry.id).recipes(1) == [{"params": {"training.lr": 1e-4}, "value": 0.8, "number": 0}]
    lib.remove(entry.id)
    assert lib.entries() == []
    with pytest.raises(Exception, match="no entry"):
        lib.remove(entry.id)


def test_cli_add_list_show_remove(tmp_path, capsys):
    make_stored_study(tmp_path / "study")
    lib = str(tmp_path / "lib")
    assert main(["library", "--library", lib, "add", str(tmp_path / "study")]) == 0
    added = json.loads(capsys.readouterr().out)["added"]
    assert main(["library", "--library", lib, "list"]) == 0
    out = capsys.readouterr().out
    assert "1 entry" in out and added in out and "best=0.9" in out
    assert main(["library", "--library", lib, "list", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["trials"] == 4 and summary["task"] == "classification" and summary["best"] == 0.9
    assert main(["library", "--library", lib, "show", added]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["best"]["value"] == 0.9 and shown["base"]["training.batch_size"] == 16
    assert [t["state"] for t in shown["trials"]] == ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED"]
    assert shown["trials"][0]["curve"] == [[20, 0.25]]
    assert main(["library", "--library", lib, "remove", added]) == 0
    capsys.readouterr()
    assert main(["library", "--library", lib, "show", added]) == 2
    assert "no entry" in capsys.readouterr().err


def test_cli_without_a_library_is_a_user_error(monkeypatch, capsys):
    monkeypatch.delenv("TUNEFORGE_LIBRARY", raising=False)
    assert main(["library", "list"]) == 2
    assert "TUNEFORGE_LIBRARY" in capsys.readouterr().err


def test_bad_entries_are_skipped_with_a_warning_naming_them(tmp_path):
    lib = DirectoryLibrary(tmp_path / "lib")
    good = make_entry("good")
    lib.add(good)
    (tmp_path / "lib" / "torn.json").write_text('{"id": "torn", "kind"', encoding="utf-8")
    (tmp_path / "lib" / "notanentry.json").write_text('{"id": "x"}', encoding="utf-8")
    old = make_entry("old")
    old.tuneforge_version = "0.0.9"
    lib.add(old)
    minimise = make_entry("loss", direction="minimize")
    lib.add(minimise)
    warnings: list[str] = []
    assert [e.id for e in lib.entries(direction="maximize", warn=warnings.append)] == [good.id]
    text = "\n".join(warnings)
    assert len(warnings) == 4
    assert "'torn'" in text and "cannot be read" in text and "'notanentry'" in text
    assert f"'{old.id}'" in text and "tuneforge 0.0.9" in text and __version__ in text
    assert f"'{minimise.id}'" in text and "minimizes validation.accuracy" in text
    # without a direction the minimising entry is usable
    assert len(lib.entries(warn=warnings.append)) == 2


@pytest.mark.parametrize("kind", ["dir", "sqlite"])
def test_an_entry_replaces_the_earlier_one_of_its_source(kind, tmp_path):
    # a study resumed that finishes again (or added twice) is one task in the library, not two:
    # a second copy would count its task twice in the portfolio's coverage
    lib = open_library(tmp_path / "lib" if kind == "dir" else f"sqlite:///{tmp_path / 'lib.db'}")
    first, other = make_entry("sst2"), make_entry("snips")
    lib.add(first)
    lib.add(other)
    again = make_entry("sst2", trials=[{"number": 0, "state": "COMPLETE", "params": {"training.lr": 3e-4},
                                        "value": 0.9, "curve": []}])
    assert again.source == first.source and again.id != first.id
    lib.add(again)
    assert sorted(e.id for e in lib.entries()) == sorted([again.id, other.id])
    assert lib.get(again.id).best == {"params": {"training.lr": 3e-4}, "value": 0.9}


WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_library import make_entry
    from tuneforge.search.library import open_library
    lib = open_library(sys.argv[1])
    for i in range(int(sys.argv[3])):
        lib.add(make_entry(sys.argv[2] + "-" + str(i)))
""")


@pytest.mark.parametrize("kind", ["dir", "sqlite"])
def test_concurrent_writers_in_real_processes_lose_nothing(kind, tmp_path):
    location = str(tmp_path / "lib") if kind == "dir" else f"sqlite:///{tmp_path / 'lib.db'}"
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(tests=str(Path(__file__).parent)), encoding="utf-8")
    procs = [subprocess.Popen([sys.executable, str(script), location, f"w{n}", "15"]) for n in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    warnings: list[str] = []
    entries = open_library(location).entries(warn=warnings.append)
    assert warnings == []
    assert len(entries) == 45 and len({e.id for e in entries}) == 45
    if kind == "dir":
        assert not list((tmp_path / "lib").glob(".*.tmp"))  # no temporary file left behind


def test_entry_from_study_keeps_trials_curves_and_the_best(tmp_path):
    make_stored_study(tmp_path / "s", values=(0.3, 0.4))
    study = optuna.load_study(study_name="snips", storage=f"sqlite:///{tmp_path / 's' / 'study.db'}")
    entry = entry_from_study(study, "here")
    assert entry.metric == "validation.accuracy" and entry.direction == "maximize"
    assert entry.best is not None and entry.best["value"] == 0.4 and entry.best["number"] == 1
    assert entry.meta["task"] == "classification" and entry.base["training.max_steps"] == 40


def test_mean_input_words_and_the_train_run_switch(monkeypatch):
    records = [{"text": "a b c", "label": "x"}, {"text": "d", "label": "y"}]
    assert mean_input_words(records, "text") == 2.0
    assert mean_input_words([{"question": "a b", "context": ["c d", "e"]}], None) == 5.0
    monkeypatch.delenv("TUNEFORGE_LIBRARY_TRAIN_RUNS", raising=False)
    assert not records_train_runs() and records_train_runs(True)
    monkeypatch.setenv("TUNEFORGE_LIBRARY_TRAIN_RUNS", "1")
    assert records_train_runs()


def test_a_train_run_is_recorded_when_asked(tiny_classification_config, tmp_path, monkeypatch, capsys):
    import yaml

    raw = dict(tiny_classification_config, training={**tiny_classification_config["training"], "max_steps": 4},
               evaluation={"strategy": "steps", "every_n_steps": 2})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    monkeypatch.setenv("TUNEFORGE_LIBRARY", str(tmp_path / "lib"))
    monkeypatch.setenv("TUNEFORGE_LIBRARY_TRAIN_RUNS", "1")
    assert main(["train", "--config", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "completed"
    (entry,) = DirectoryLibrary(tmp_path / "lib").entries()
    assert entry.kind == "train" and entry.meta["model_params"] > 0 and entry.meta["n_labels"] >= 2
    assert entry.best is not None and entry.best["params"]["training.max_steps"] == 4
    assert [s for s, _ in entry.trials[0]["curve"]] == [2, 4]
