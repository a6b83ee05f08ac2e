"""Reading a run config: YAML, relative paths, dotted overrides, validation, the saved copy.

``load_config`` reads YAML (``yaml.safe_load``), applies dotted command-line overrides
(``training.lr=3e-5``), and validates the result before anything heavy is imported.
Unknown keys are errors with a "did you mean" (:mod:`tuneforge.config.suggest`).

Paths inside a config file (``data.*``, a local ``model.name_or_path`` starting
with ``./`` or ``../``, ``distributed.deepspeed_config``) are relative to the
config file; paths given as overrides on the command line are relative to the
current directory. ``output.dir`` is relative to the current directory.
``TUNEFORGE_OVERRIDES`` adds overrides after the command line's.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tuneforge.config.schema import RunConfig
from tuneforge.config.suggest import format_validation_error
from tuneforge.dotted import get_dotted, set_dotted
from tuneforge.errors import ConfigError

_CONFIG_RELATIVE_KEYS = ("data.train", "data.validation", "data.test", "distributed.deepspeed_config")


def _looks_local(value: str) -> bool:
    return value.startswith(("./", "../", "~"))


def _resolve(value: str, base: Path) -> str:
    if value.startswith("~"):
        return str(Path(value).expanduser())
    p = Path(value)
    return str(p if p.is_absolute() else (base / p).resolve())


def resolve_paths(raw: dict[str, Any], base: Path, keys: tuple[str, ...] = _CONFIG_RELATIVE_KEYS) -> None:
    """Make relative file paths in ``raw`` absolute against ``base`` (in place)."""
    for key in keys:
        value = get_dotted(raw, key)
        if isinstance(value, str) and value and "://" not in value:
            set_dotted(raw, key, _resolve(value, base))
    name = get_dotted(raw, "model.name_or_path")
    if isinstance(name, str) and _looks_local(name):
        set_dotted(raw, "model.name_or_path", _resolve(name, base))
    meta = raw.get("meta")
    if isinstance(meta, dict):  # data files of listed meta-learning tasks
        for group in ("tasks", "val_tasks", "test_tasks"):
            for item in meta.get(group) or []:
                if isinstance(item, dict) and isinstance(item.get("data"), dict):
                    resolve_paths(item, base, ("data.train", "data.validation", "data.test"))


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_override(text: str) -> tuple[str, Any]:
    """``"training.lr=3e-5"`` -> ``("training.lr", 3e-05)``; values parse as YAML."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' must look like section.key=value (e.g. training.lr=3e-5)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML: {exc}") from exc
    # YAML 1.1 reads 3e-5 as a string; numbers users type should be numbers.
    if isinstance(parsed, str) and _NUMBER.fullmatch(parsed):
        parsed = float(parsed) if any(c in parsed for c in ".eE") else int(parsed)
    return key, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str], base: Path | None = None) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    cwd = base or Path.cwd()
    for text in overrides:
        key, value = parse_override(text)
        if isinstance(value, str) and (key in _CONFIG_RELATIVE_KEYS or (key == "model.name_or_path" and _looks_local(value))):
            value = _resolve(value, cwd)
        set_dotted(raw, key, value)
    return raw


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model:, task:, ...)")
    return raw


def validate(raw: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, RunConfig, source)) from None
    config._source = source
    return config


def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> RunConfig:
    """Read, resolve, override and validate a run config. Raises :class:`ConfigError`."""
    path = Path(path)
    raw = read_yaml(path)
    resolve_paths(raw, path.resolve().parent)
    return load_config_dict(raw, overrides, source=str(path))


def load_config_dict(raw: dict[str, Any], overrides: list[str] | None = None, source: str = "config") -> RunConfig:
    """A run config from a dict that is not a file (built by a command): the same overrides,
    ``TUNEFORGE_OVERRIDES`` included, and validation as :func:`load_config`."""
    return validate(apply_overrides(raw, [*(overrides or []), *env_overrides()]), source=source)


def env_overrides() -> list[str]:
    """Overrides from ``TUNEFORGE_OVERRIDES`` (space-separated, shell quoting), applied after the
    command line's to every config loaded; the docs tests use it to shrink the runs they execute."""
    import shlex

    return shlex.split(os.environ.get("TUNEFORGE_OVERRIDES", ""))


def diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys at which two nested dicts (e.g. config dumps) differ, sorted."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def dump_config(cfg: RunConfig, path: str | os.PathLike[str]) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), encoding="utf-8")


def validate_options(options_cls: type[BaseModel], raw: dict[str, Any], source: str, prefix: str) -> BaseModel:
    """A plugin's options section (``task.``, ``adapter.`` ...) validated against its model;
    a :class:`ConfigError` naming the file and keys otherwise."""
    try:
        return options_cls.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, options_cls, source, prefix=prefix)) from None

