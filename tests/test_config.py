"""Config loading, validation messages and overrides."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tuneforge.config import RunConfig, apply_overrides, load_config, parse_override, validate
from tuneforge.errors import ConfigError

BASE = {
    "model": {"name_or_path": "some/model"},
    "task": {"name": "classification"},
    "data": {"train": "train.csv"},
}


def write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_defaults_live_in_the_schema():
    cfg = validate(BASE)
    assert cfg.training.lr == 5e-5 and cfg.training.scheduler == "linear"
    assert cfg.trackers == ["jsonl"] and cfg.resume == "never"
    assert cfg.eval_batch_size() == 2 * cfg.training.batch_size


def test_unknown_key_names_path_and_suggests(tmp_path):
    raw = {**BASE, "training": {"lrr": 1e-4}}
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, raw))
    msg = str(err.value)
    assert "unknown key 'training.lrr'" in msg and "did you mean 'lr'?" in msg
    assert str(tmp_path / "run.yaml") in msg
    assert len(msg.splitlines()) == 1


def test_unknown_section_suggests():
    with pytest.raises(ConfigError, match=r"unknown key 'trainig'.*did you mean 'training'"):
        validate({**BASE, "trainig": {}})


@pytest.mark.parametrize(
    ("raw", "unknown", "meant"),
    [
        ({"training": {"learning_rate": 1e-4}}, "training.learning_rate", "training.lr"),
        # difflib alone would offer eval_batch_size here
        ({"training": {"per_device_train_batch_size": 8}}, "training.per_device_train_batch_size", "training.batch_size"),
        ({"training": {"num_train_epochs": 3}}, "training.num_train_epochs", "training.epochs"),
        ({"training": {"bf16": True}}, "training.bf16", "training.mixed_precision"),
        ({"output_dir": "runs/x"}, "output_dir", "output.dir"),
        ({"evaluation": {"eval_steps": 50}}, "evaluation.eval_steps", "evaluation.every_n_steps"),
        ({"evaluation": {"seed": 3}}, "evaluation.seed", "training.seed"),  # a key of another section
    ],
)
def test_unknown_key_from_another_trainer_or_section_names_the_tuneforge_key(tmp_path, raw, unknown, meant):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, {**BASE, **raw}))
    msg = str(err.value)
    assert f"unknown key '{unknown}' (did you mean '{meant}'?" in msg
    assert msg.startswith(str(tmp_path / "run.yaml"))


def test_plugin_option_errors_name_the_config_file(tmp_path):
    from tuneforge.preflight import preflight

    train = tmp_path / "train.csv"
    train.write_text("text,label\na,x\nb,y\n")
    raw = {**BASE, "data": {"train": str(train)}, "adapter": {"type": "lora", "lora_r": 4}}
    config = load_config(write(tmp_path, raw))
    assert config.source == str(tmp_path / "run.yaml")
    with pytest.raises(ConfigError) as err:
        preflight(config, check_output=False)
    assert str(err.value).startswith(f"{tmp_path / 'run.yaml'}: unknown key 'adapter.lora_r' (did you mean 'adapter.r'?")


def test_wrong_type_and_range_name_the_key():
    with pytest.raises(ConfigError, match=r"'training.batch_size'.*valid integer.*got 'big'"):
        validate({**BASE, "training": {"batch_size": "big"}})
    with pytest.raises(ConfigError, match=r"'training.lr'.*greater than 0.*got -1"):
        validate({**BASE, "training": {"lr": -1}})
    with pytest.raises(ConfigError, match=r"'training.scheduler'.*'linear', 'cosine' or 'constant'"):
        validate({**BASE, "training": {"scheduler": "step"}})
    with pytest.raises(ConfigError, match=r"each beta must be in \[0, 1\)"):
        validate({**BASE, "training": {"betas": [0.9, 1.5]}})


def test_missing_required_and_cross_checks():
    with pytest.raises(ConfigError, match="missing required key 'model'"):
        validate({"task": {"name": "x"}, "data": {"train": "a"}})
    with pytest.raises(ConfigError, match=r"needs every_n_steps"):
        validate({**BASE, "evaluation": {"strategy": "steps"}})
    with pytest.raises(ConfigError, match="early_stopping_patience needs evaluation"):
        validate({**BASE, "evaluation": {"early_stopping_patience": 2}})


def test_overrides_parse_yaml_values_and_numbers():
    assert parse_override("training.lr=3e-5") == ("training.lr", 3e-5)
    assert parse_override("training.max_steps=7") == ("training.max_steps", 7)
    assert parse_override("trackers=[jsonl, tensorboard]") == ("trackers", ["jsonl", "tensorboard"])
    assert parse_override("adapter.type=lora") == ("adapter.type", "lora")
    raw = apply_overrides(BASE, ["training.lr=3e-5", "adapter.type=lora", "adapter.r=8"])
    cfg = validate(raw)
    assert cfg.training.lr == 3e-5 and cfg.adapter is not None and cfg.adapter.options() == {"r": 8}
    assert BASE.get("adapter") is None  # the input is not mutated


@pytest.mark.parametrize("bad", ["training.lr", "=3", "training..lr=1", "lr 3"])
def test_malformed_overrides(bad):
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        parse_override(bad)


def test_override_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match=r"'training\.lr' is a value, not a section"):
        apply_overrides(BASE | {"training": {"lr": 1.0}}, ["training.lr.x=1"])


def test_paths_resolve_relative_to_config_file_and_overrides_to_cwd(tmp_path, monkeypatch):
    sub = tmp_path / "configs"
    sub.mkdir()
    path = sub / "c.yaml"
    path.write_text(yaml.safe_dump({**BASE, "model": {"name_or_path": "./local-model"}}))
    cfg = load_config(path)
    assert cfg.data.train == str(sub / "train.csv")
    assert cfg.model.name_or_path == str(sub / "local-model")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(path, ["data.validation=dev.csv"])
    assert cfg.data.validation == str(tmp_path / "dev.csv")


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)


def test_fingerprint_is_stable_and_sensitive():
    a, b = validate(BASE), validate(BASE)
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != validate(apply_overrides(BASE, ["training.lr=1e-3"])).fingerprint()


def test_every_shipped_config_validates():
    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert configs, "configs/ has no YAML files"
    for path in configs:
        assert isinstance(load_config(path), RunConfig), path


def test_yaml_no_means_the_option_not_false(tmp_path):
    path = write(tmp_path, {**BASE, "evaluation": {"strategy": "no"}})
    path.write_text(path.read_text().replace("strategy: 'no'", "strategy: no"))
    assert "strategy: no" in path.read_text()
    cfg = load_config(path, ["training.mixed_precision=no"])
    assert cfg.evaluation.strategy == "no" and cfg.training.mixed_precision == "no"


@pytest.mark.parametrize(
    "statement",
    [
        "from tuneforge.config import RunConfig",
        "from tuneforge.config.schema import RunConfig",
        "from tuneforge.search.config import SearchConfig",
        "from tuneforge.meta.config import MetaConfig",
        "from tuneforge.search import SearchSpace",
        "from tuneforge.meta import Episode",
    ],
)
def test_the_schema_imports_first_from_any_side_without_torch(statement):
    # The meta:/search: sections live in their packages and RunConfig holds them: whichever module a
    # process imports first, there is no import cycle, and the schema stays free of torch.
    code = f"{statement}; import sys; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_every_exported_name_resolves():
    import tuneforge.config as config
    from tuneforge.meta.config import MetaConfig
    from tuneforge.search.config import SearchConfig

    assert all(getattr(config, name) is not None for name in config.__all__)
    assert config.MetaConfig is MetaConfig and config.SearchConfig is SearchConfig
    with pytest.raises(AttributeError, match="no attribute '_get'"):
        _ = config._get
