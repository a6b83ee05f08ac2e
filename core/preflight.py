"""Everything checked before a process group or a model exists.

:func:`preflight` resolves the plugins and their options, reads every data file with the
task's own reader (so ``tuneforge validate`` catches a malformed line, not ``train`` after the
model has loaded), checks model paths, the DeepSpeed JSON, the resume checkpoint and the
output directory. It is cheap: no torch work, no model, no tokenizer.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.builders import build_plugins, make_plugin
from tuneforge.checkpoint import CheckpointManager
from tuneforge.config import RunConfig
from tuneforge.errors import ConfigError, DataError
from tuneforge.plugin_manager import PluginManager
from tuneforge.tasks import Task, check_metric_names
from tuneforge.tracking import Tracker

SPLITS = ("train", "validation", "test")


@dataclass
class Plan:
    """What preflight resolved: the plugin classes, their validated options, the distribution
    strategy, and the records of every local data file (read once, here)."""

    config: RunConfig
    plugins: PluginManager
    task_cls: type[Task]
    task_options: Any
    adapter_cls: Any = None
    adapter_options: Any = None
    tracker_classes: list[type[Tracker]] = field(default_factory=list)
    strategy: Any = None  # tuneforge.distributed.Strategy: single / ddp / deepspeed, resolved before launch
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # split -> records of data.<split>

    def make_task(self) -> Task:
        return self.task_cls(self.task_options, self.config)

    def make_adapter(self) -> Any:
        return self.adapter_cls(self.adapter_options, self.config) if self.adapter_cls is not None else None


def preflight(config: RunConfig, plugins: PluginManager | None = None, *, check_output: bool = True) -> Plan:
    """Validate plugin names/options, data files (read with the task's reader), model paths and
    the output dir. Raises a one-line :class:`~tuneforge.errors.TuneforgeError` on the first problem."""
    pm = plugins or build_plugins(config)
    pm.build_registries()
    task_cls = pm.tasks.get(config.task.name)
    task_options = task_cls.parse_options(config.task.options(), config.source)
    check_metric_names(task_cls, config, pm.metrics)
    plan = Plan(config, pm, task_cls, task_options)
    if config.adapter is not None:
        adapter = make_plugin(pm.adapters.get(config.adapter.type), config.adapter.options(), config)
        plan.adapter_cls, plan.adapter_options = type(adapter), adapter.options
        adapter.preflight()
    plan.tracker_classes = [pm.trackers.get(name) for name in config.trackers]
    from tuneforge.distributed import resolve_strategy  # cheap: reads the env and the DeepSpeed JSON

    plan.strategy = resolve_strategy(config)
    for tracker_cls in plan.tracker_classes:  # a missing package gives an install hint, not a traceback
        tracker_cls(Path(config.output.dir), {}).check_available()
    plan.records = read_data_files(config, plan.make_task())
    check_local_paths(config)
    if config.evaluation.metric is None and has_evaluation(config) and not task_cls.primary_metric:
        raise ConfigError(f"task '{config.task.name}' has no primary metric; set evaluation.metric")
    if check_output:
        check_output_dir(config)
    from tuneforge.estimate import warn_if_over_device_memory  # CUDA only; never fatal

    warn_if_over_device_memory(config, plan.strategy)
    return plan


def has_evaluation(config: RunConfig) -> bool:
    """Whether the run evaluates on validation data during training."""
    return config.data.has_validation and config.evaluation.strategy != "no"


def read_data_files(config: RunConfig, task: Task) -> dict[str, list[dict[str, Any]]]:
    """Every local ``data.<split>`` file read with the task's reader (malformed lines and
    missing files are a :class:`DataError` naming the file and line)."""
    records: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        path = getattr(config.data, split)
        if path is None:
            continue
        if not Path(path).exists():
            raise DataError(
                f"data.{split}: file '{path}' does not exist; fix the path (in a config file it is relative "
                "to the file's directory, on the command line to the current directory)"
            )
        records[split] = task.read(path, split)
    return records


def check_local_paths(config: RunConfig) -> None:
    """A local model/tokenizer directory or an explicit resume checkpoint must exist, and a hub
    name must resolve on the hub or in its cache."""
    from tuneforge.gguf import check_model
    from tuneforge.hub import check_hub_name, resolve_pretrained

    for key in ("name_or_path", "tokenizer"):
        name = getattr(config.model, key)
        if name is None:
            continue
        if check_model(name, config.model.gguf_file if key == "name_or_path" else None, f"model.{key}"):
            continue  # a GGUF file, checked (exists, magic bytes, gguf package, architecture)
        local = resolve_pretrained(name)  # pkg:... -> its directory (ConfigError when missing)
        if Path(local).exists():
            continue
        if local != name or Path(local).is_absolute() or local.startswith((".", "~")):
            raise ConfigError(
                f"model.{key}: '{name}' does not exist; give a local model directory, a Hugging Face hub "
                "name, or pkg:<package>/<subdir>"
            )
        check_hub_name(name, "tokenizer" if key == "tokenizer" else key, config.model.revision)
    ds_config = config.distributed.deepspeed_config
    if ds_config is not None and not Path(ds_config).is_file():
        raise ConfigError(f"distributed.deepspeed_config: file '{ds_config}' does not exist")
    if config.resume not in ("never", "auto") and not Path(config.resume).exists():
        raise ConfigError(
            f"resume: checkpoint '{config.resume}' does not exist; give a checkpoint directory "
            "(<run>/checkpoints/step-N), resume=auto for the latest one, or resume=never"
        )


def check_output_dir(config: RunConfig) -> None:
    """Fail before training if the run dir is unwritable or would clobber checkpoints."""
    run_dir = Path(config.output.dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(f"output.dir '{run_dir}' is not writable: {exc.strerror or exc}") from None
    usage = shutil.disk_usage(run_dir)
    if usage.free < 50 * 1024 * 1024:
        raise ConfigError(f"output.dir '{run_dir}' has only {usage.free // 2**20} MiB free; checkpoints need more")
    has_ckpts = bool(CheckpointManager(run_dir).complete())
    if has_ckpts and config.resume == "never" and not config.output.overwrite:
        raise ConfigError(
            f"output.dir '{run_dir}' already holds checkpoints; continue it with resume=auto, "
            "start over with output.overwrite=true, or choose another output.dir"
        )
