"""Small pieces of the search machinery: error lines, objective values from a run directory,
stale-trial detection and retry (optimizer hyperparameters after a resume: tests/test_run_control.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import optuna
import pytest

from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.search.launcher import last_error_line
from tuneforge.search.objective import Objective, objective_value
from tuneforge.search.storage import fail_stale_trials, open_storage, retried_numbers


def test_last_error_line_finds_the_reason():
    log = "INFO starting\nTraceback (most recent call last):\n  File x\nKeyError: 'no_such_activation'\n"
    assert last_error_line(log, 1) == "KeyError: 'no_such_activation'"
    assert last_error_line("step 3\nerror: non-finite loss at step 4\n", 2) == "error: non-finite loss at step 4"
    torchrun = ("ValueError: bad rank input\n"
                "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \nlaunch failed\n")
    assert last_error_line(torchrun, 1) == "ValueError: bad rank input"
    assert last_error_line("", -9) == "killed by SIGKILL (out of memory?)"
    assert last_error_line("whatever", 0) is None


def test_trial_process_exit_skips_teardown_but_not_atexit_or_buffered_output():
    # exit_now ends a trial without module teardown; trackers' atexit flushes and block-buffered
    # stdout (a trial's stdout is its log file) must still come out, and the code must reach the controller.
    code = (
        "import atexit, sys\n"
        "from tuneforge.search.trial import exit_now\n"
        "atexit.register(lambda: print('atexit ran', file=sys.stderr))\n"
        "print('buffered line')\n"
        "sys.stderr.write('stderr line\\n')\n"
        "exit_now(3)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # keep stdout block-buffered
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 3
    assert proc.stdout.splitlines() == ["buffered line"]
    assert proc.stderr.splitlines() == ["stderr line", "atexit ran"]


def test_objective_values_from_a_run_directory(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"train_seconds": 12.5, "steps": 40,
                                                       "test": {"accuracy": 0.8}}))
    (tmp_path / "trial_info.json").write_text(json.dumps({"trainable_params": 1000, "total_params": 5000}))
    evals = [{"step": 10, "metrics": {"accuracy": 0.6, "loss": 0.7}},
             {"step": 20, "metrics": {"accuracy": 0.9, "loss": 0.4}},
             {"step": 30, "metrics": {"accuracy": 0.7, "loss": 0.5}}]
    (tmp_path / "trial_evaluations.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals) + '{"cut')
    assert objective_value(Objective("validation.accuracy", "maximize"), tmp_path) == 0.9
    assert objective_value(Objective("validation.loss", "minimize"), tmp_path) == 0.4
    assert objective_value(Objective("validation.accuracy", "maximize"), tmp_path, last=True) == 0.7
    assert objective_value(Objective("test.accuracy", "maximize"), tmp_path) == 0.8
    assert objective_value(Objective("train_seconds", "minimize"), tmp_path) == 12.5
    assert objective_value(Objective("trainable_params", "minimize"), tmp_path) == 1000
    with pytest.raises(TuneforgeError, match="'f1' was not logged on validation; logged: accuracy, loss"):
        objective_value(Objective("validation.f1", "maximize"), tmp_path)


def test_stale_running_trial_is_failed_and_requeued_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = open_storage(url, heartbeat_seconds=1, max_retries=1)
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask({"training.lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)})
    storage.record_heartbeat(trial._trial_id)  # then its controller "dies": no more heartbeats
    time.sleep(3.5)  # > grace period 2 s even with the whole-second timestamps SQLite stores
    fail_stale_trials(study)
    trials = study.get_trials()
    assert trials[0].state.name == "FAIL"
    assert trials[1].state.name == "WAITING" and trials[1].system_attrs["failed_trial"] == 0
    assert trials[1].params == trials[0].params
    assert retried_numbers(trials) == {0}
    retry = study.ask()  # the next worker picks the retry up, with the same parameters
    assert retry.number == 1 and retry.suggest_float("training.lr", 1e-5, 1e-2, log=True) == trials[0].params["training.lr"]


def test_resume_fails_a_trial_left_running_without_any_heartbeat(tmp_path):
    # a controller killed between asking a trial and its first beat: Optuna's stale check skips
    # a trial with no heartbeat row, so settle_stale must end it (the CI flake of stop 22)
    from tuneforge.search.study import settle_stale

    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = open_storage(url, heartbeat_seconds=1, max_retries=1)
    study = optuna.create_study(storage=storage, study_name="s")
    dist = {"training.lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)}
    unbeaten = study.ask(dist)
    beaten = study.ask(dist)
    storage.record_heartbeat(beaten._trial_id)
    fail_stale_trials(study)
    assert [t.state.name for t in study.get_trials()] == ["RUNNING", "RUNNING"]  # what Optuna alone does
    said: list[str] = []
    settle_stale(study, 1, said.append)
    trials = study.get_trials()
    assert [t.state.name for t in trials[:2]] == ["FAIL", "FAIL"]
    retries = {t.system_attrs["failed_trial"]: t for t in trials[2:]}
    assert sorted(retries) == [0, 1] and all(t.state.name == "WAITING" for t in retries.values())
    assert retries[unbeaten.number].params == trials[0].params
    assert said == ["trial 0 was left RUNNING without a heartbeat by a dead controller; failed it"]


def test_warm_start_takes_the_best_trials_of_an_earlier_study(tmp_path):
    from tuneforge.errors import ConfigError
    from tuneforge.search.warmstart import best_params_of

    earlier = tmp_path / "earlier"
    earlier.mkdir()
    url = f"sqlite:///{earlier / 'study.db'}"
    study = optuna.create_study(storage=url, study_name="old", direction="minimize")
    dist = {"training.lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True),
            "training.seed": optuna.distributions.IntDistribution(0, 9)}
    for lr, loss in ((1e-2, 0.9), (1e-3, 0.2), (1e-4, 0.5), (3e-3, 0.1)):
        study.add_trial(optuna.trial.create_trial(params={"training.lr": lr, "training.seed": 1},
                                                  distributions=dist, value=loss))
    assert best_params_of(str(earlier), 2, ["training.lr"]) == [{"training.lr": 3e-3}, {"training.lr": 1e-3}]
    assert best_params_of(f"{url}#old", 1, ["training.lr", "training.seed"]) == [
        {"training.lr": 3e-3, "training.seed": 1}]
    with pytest.raises(ConfigError, match="no study 'nope'"):
        best_params_of(f"{url}#nope", 1, ["training.lr"])
    with pytest.raises(ConfigError, match=r"search\.warm_start\.studies: .* is not a study directory \(no study\.db\)"):
        best_params_of(str(tmp_path / "missing"), 1, ["training.lr"])


def test_a_new_study_starts_from_the_best_trials_of_studies_on_similar_tasks(search_config, tmp_path,
                                                                              tiny_classification_data):
    """Studies record what task they tuned; a new one on a similar task runs their best parameters first."""
    from tuneforge.search.runner import StudyRunner
    from tuneforge.search.storage import default_storage_url
    from tuneforge.search.warmstart import ATTR, similar_task_trials

    lr = {"training.lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True}}
    first = StudyRunner(search_config({"params": lr, "dir": str(tmp_path / "studies" / "sentiment-a")}, name="a.yaml"))
    study = first.open_study(None)
    metadata = study.user_attrs[ATTR]
    assert metadata["task"] == "classification" and metadata["labels"] == ["neg", "pos"] and metadata["n_train"] > 0
    dist = {"training.lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)}
    for value, acc in ((1e-2, 0.6), (3e-4, 0.95), (1e-3, 0.9)):
        study.add_trial(optuna.trial.create_trial(params={"training.lr": value}, distributions=dist, value=acc))
    # an unrelated study in the same place: another task plugin, never used
    (tmp_path / "studies" / "ner").mkdir()
    other = optuna.create_study(storage=default_storage_url(tmp_path / "studies" / "ner"), study_name="ner",
                                direction="maximize")
    other.set_user_attr(ATTR, {**metadata, "task": "ner"})
    other.add_trial(optuna.trial.create_trial(params={"training.lr": 5e-5}, distributions=dist, value=0.99))

    ws = {"similar_tasks": [str(tmp_path / "studies")], "top_k": 2}
    second = StudyRunner(search_config({"params": lr, "dir": str(tmp_path / "new"), "warm_start": ws}, name="b.yaml"))
    second.open_study(None)
    assert second.warm_start() == 2
    waiting = second.study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"]["training.lr"] for t in waiting] == [3e-4, 1e-3]
    assert waiting[0].user_attrs["warm_start_from"].endswith("#sentiment-a")
    assert waiting[0].user_attrs["task_similarity"] == pytest.approx(1.0)
    assert second.warm_start() == 0  # already queued: not again
    with pytest.raises(ConfigError, match="is not a directory or storage URL"):
        similar_task_trials(StudyRunner(search_config({"params": lr, "dir": str(tmp_path / "x"),
                                                       "warm_start": {"similar_tasks": [str(tmp_path / "nope")]}},
                                                      name="c.yaml")), str(tmp_path / "nope"))
