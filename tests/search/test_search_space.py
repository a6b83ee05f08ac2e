"""The search space and the search section: parsing, validation errors, sampling."""

from __future__ import annotations

import copy

import optuna
import pytest

from tuneforge.config import parse_override, validate
from tuneforge.errors import ConfigError, PluginError
from tuneforge.search.runner import StudyRunner
from tuneforge.search.space import SearchSpace, apply_params, to_overrides


def _raw(cfg, **search):
    raw = copy.deepcopy(cfg)
    raw["search"] = search
    return raw


def test_unknown_param_key_is_a_config_error_with_suggestion(tiny_classification_config):
    raw = _raw(tiny_classification_config, params={"training.lrr": {"type": "float", "low": 1e-5, "high": 1e-3}})
    with pytest.raises(ConfigError) as err:
        validate(raw)
    assert "unknown config key 'training.lrr'" in str(err.value)
    assert "did you mean 'training.lr'" in str(err.value)


def test_unknown_search_key_gets_did_you_mean(tiny_classification_config):
    raw = _raw(tiny_classification_config, params={"training.lr": {"type": "float", "low": 1e-5, "high": 1e-3}},
               n_trial=3)
    with pytest.raises(ConfigError, match=r"unknown key 'search.n_trial' \(did you mean 'n_trials'\?\)"):
        validate(raw)


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ({"type": "float", "low": 1e-3, "high": 1e-5}, "must not exceed high"),
        ({"type": "float", "low": 0.0, "high": 1e-3, "log": True}, "log scale needs low > 0"),
        ({"type": "categorical"}, "needs a non-empty 'choices'"),
        ({"type": "int", "low": 1, "high": 8.5}, "needs a whole 'high'"),
        ({"type": "float", "low": 1e-5, "high": 1e-3, "log": True, "step": 1e-5}, "cannot be combined"),
        ({"type": "float", "high": 1e-3}, "needs 'low' and 'high'"),
        ({"type": "floaty", "low": 1, "high": 2}, "search.params.training.lr.type"),
    ],
)
def test_param_shape_errors(tiny_classification_config, param, message):
    with pytest.raises(ConfigError, match=message):
        validate(_raw(tiny_classification_config, params={"training.lr": param}))


def test_searching_a_whole_section_or_the_search_itself_is_refused(tiny_classification_config):
    with pytest.raises(ConfigError, match="is a whole section"):
        validate(_raw(tiny_classification_config, params={"training": {"type": "categorical", "choices": [1]}}))
    with pytest.raises(ConfigError, match="cannot be searched"):
        validate(_raw(tiny_classification_config, params={"search.n_trials": {"type": "int", "low": 1, "high": 2}}))


def test_open_sections_and_dict_fields_are_searchable(tiny_classification_config):
    cfg = validate(_raw(tiny_classification_config, params={
        "adapter.r": {"type": "int", "low": 4, "high": 16, "when": {"adapter.type": "lora"}},
        "model.config_overrides.hidden_dropout_prob": {"type": "float", "low": 0.0, "high": 0.3},
    }))
    assert list(cfg.search.params) == ["adapter.r", "model.config_overrides.hidden_dropout_prob"]


def test_values_outside_the_run_schema_are_rejected_before_any_trial(search_config):
    # training.lr must be < 10 in the run schema; the space could sample 20.
    path = search_config({"params": {"training.lr": {"type": "float", "low": 1e-3, "high": 20.0}}})
    with pytest.raises(ConfigError) as err:
        StudyRunner(path)
    text = str(err.value)
    assert "search.params.training.lr: the value 20.0" in text and "less than 10" in text


def test_plugin_options_are_checked_for_searched_task_keys(search_config):
    path = search_config({"params": {"task.text_feld": {"type": "categorical", "choices": ["text"]}}})
    with pytest.raises(ConfigError, match="text_feld"):
        StudyRunner(path)


def test_reserved_and_conditional_order_errors(tiny_classification_config):
    with pytest.raises(ConfigError, match="set by the search"):
        SearchSpace.from_config(validate(_raw(tiny_classification_config, params={
            "resume": {"type": "categorical", "choices": ["never"]}})).search)
    with pytest.raises(ConfigError, match=r"list 'training.scheduler' before 'training.warmup_ratio'"):
        SearchSpace.from_config(validate(_raw(tiny_classification_config, params={
            "training.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2, "when": {"training.scheduler": "linear"}},
            "training.scheduler": {"type": "categorical", "choices": ["linear", "constant"]},
        })).search)
    with pytest.raises(ConfigError, match=r"did you mean 'training.scheduler'"):
        SearchSpace.from_config(validate(_raw(tiny_classification_config, params={
            "training.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2, "when": {"training.schedular": "linear"}},
        })).search)


def test_conditional_params_are_sampled_only_when_their_condition_holds(tiny_classification_config):
    raw = _raw(tiny_classification_config, params={
        "training.scheduler": {"type": "categorical", "choices": ["linear", "constant"]},
        "training.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2, "when": {"training.scheduler": "linear"}},
        "adapter.r": {"type": "int", "low": 4, "high": 8, "when": {"adapter.type": ["lora", "dora"]}},
    })
    space = SearchSpace.from_config(validate(raw).search)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(20):
        trial = study.ask()
        values = space.sample(trial, raw)
        study.tell(trial, 0.0)
        seen.append(values)
        assert ("training.warmup_ratio" in values) == (values["training.scheduler"] == "linear")
        assert "adapter.r" not in values  # the base config has no adapter
    assert {v["training.scheduler"] for v in seen} == {"linear", "constant"}
    with_lora = apply_params(raw, {"adapter": {"type": "lora"}})
    trial = study.ask()
    assert "adapter.r" in space.sample(trial, with_lora)


def test_grid_needs_a_finite_set(tiny_classification_config):
    space = SearchSpace.from_config(validate(_raw(tiny_classification_config, params={
        "training.lr": {"type": "float", "low": 1e-4, "high": 1e-3, "step": 3e-4},
        "training.batch_size": {"type": "int", "low": 8, "high": 10},
        "training.weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
    })).search)
    assert space["training.lr"].grid() == pytest.approx([1e-4, 4e-4, 7e-4, 1e-3])
    assert space["training.batch_size"].grid() == [8, 9, 10]
    with pytest.raises(ConfigError, match=r"search.params.training.weight_decay: grid search needs"):
        space["training.weight_decay"].grid()


def test_overrides_round_trip_through_the_cli_parser():
    params = {"training.lr": 3.2e-05, "training.batch_size": 16, "training.scheduler": "cosine",
              "output.export": False, "model.config_overrides.hidden_act": "gelu"}
    parsed = dict(parse_override(o) for o in to_overrides(params))
    assert parsed == params


def test_unknown_strategy_and_bad_strategy_options(search_config):
    path = search_config({"strategy": "tpee", "params": {"training.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}})
    with pytest.raises(PluginError, match="did you mean 'tpe'"):
        StudyRunner(path)
    path = search_config({"strategy": "tpe", "options": {"n_startup": 2},
                          "params": {"training.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}})
    with pytest.raises(ConfigError, match=r"search.options.n_startup' \(did you mean 'n_startup_trials'\?\)"):
        StudyRunner(path)


def test_objective_and_pruner_checks(search_config):
    lr = {"training.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}
    with pytest.raises(ConfigError, match="is not an objective"):
        StudyRunner(search_config({"params": lr, "objectives": [{"metric": "accuracy"}]}))
    with pytest.raises(ConfigError, match=r"give the direction of 'validation.macro_f1'"):
        StudyRunner(search_config({"params": lr, "objectives": [{"metric": "validation.macro_f1"}]}))
    with pytest.raises(ConfigError, match="pruning reads intermediate validation metrics"):
        StudyRunner(search_config({"params": lr, "pruner": {"type": "median"},
                                   "objectives": [{"metric": "train_seconds"}]}))
    with pytest.raises(ConfigError, match="pruning needs a single objective"):
        StudyRunner(search_config({"params": lr, "pruner": {"type": "median"}, "objectives": [
            {"metric": "validation.accuracy"}, {"metric": "trainable_params"}]}))
    with pytest.raises(ConfigError, match="optimises one objective"):
        StudyRunner(search_config({"params": lr, "strategy": "cmaes", "objectives": [
            {"metric": "validation.accuracy"}, {"metric": "train_seconds"}]}))
    with pytest.raises(ConfigError, match="PBT changes hyperparameters during training"):
        StudyRunner(search_config({"strategy": "pbt", "options": {"interval_steps": 10},
                                   "params": {"training.batch_size": {"type": "int", "low": 8, "high": 16}}}))
    with pytest.raises(ConfigError, match=r"does not produce 'acuracy' \(did you mean 'accuracy'\?\)"):
        StudyRunner(search_config({"params": lr, "objectives": [{"metric": "validation.acuracy",
                                                                  "direction": "maximize"}]}))
    with pytest.raises(ConfigError, match=r"every_n_steps=50 is more than training.max_steps=40, so no trial"):
        StudyRunner(search_config({"params": lr}, evaluation={"every_n_steps": 50}))
    runner = StudyRunner(search_config({"params": lr}))
    assert [(o.metric, o.direction) for o in runner.objectives] == [("validation.accuracy", "maximize")]
