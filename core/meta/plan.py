"""What a ``tuneforge meta`` run is made of, resolved before anything loads: the algorithm,
the tasks and their data (:func:`preflight_meta`), and the label pools of meta-train,
meta-val and meta-test (:func:`build_collection`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tuneforge.config import MetaConfig, MetaSourceTask, RunConfig
from tuneforge.data import record_origin
from tuneforge.errors import ConfigError, DataError, DistributedError
from tuneforge.meta.algorithm import MetaAlgorithm
from tuneforge.meta.episodes import LabelPool, split_labels
from tuneforge.meta.learner import ExampleStore
from tuneforge.plugin_manager import PluginManager
from tuneforge.tasks import Task


@dataclass
class ListedTask:
    """A task of ``meta.tasks``/``val_tasks``/``test_tasks``: its spec, task plugin, the run config
    with its task and data, and the records of its data files (read once, by preflight)."""

    spec: MetaSourceTask
    task: Task
    config: RunConfig
    records: dict[str, list[dict[str, Any]]]


@dataclass
class MetaPlan:
    """What preflight resolved for a meta run; ``records``: the main data files, read once."""

    config: RunConfig
    meta: MetaConfig
    plugins: PluginManager
    algorithm_cls: type[MetaAlgorithm]
    main_task: Task
    listed: dict[str, list[ListedTask]] = field(default_factory=dict)
    adapter: Any = None
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def _task_for(config: RunConfig, pm: PluginManager, task_cfg: Any, where: str) -> Task:
    from tuneforge.builders import make_task

    task = make_task(config, pm, task_cfg, source=where)
    for key in ("text_field", "label_field"):
        if not hasattr(task.options, key):
            raise ConfigError(
                f"{where}: task '{task_cfg.name}' has no '{key}' option; meta-learning needs a text "
                "classification task (e.g. task.name: classification)"
            )
    if getattr(task.options, "text_pair_field", None):
        raise ConfigError(f"{where}: text pairs (text_pair_field) are not supported by meta-learning yet")
    return task


def preflight_meta(config: RunConfig, plugins: PluginManager | None = None, *, check_output: bool = True) -> MetaPlan:
    """Check the algorithm, tasks, adapter, data files and output dir; no model is loaded."""
    from tuneforge.builders import build_plugins, make_adapter
    from tuneforge.distributed import resolve_strategy
    from tuneforge.preflight import check_output_dir, read_data_files

    meta = config.meta
    if meta is None:
        raise ConfigError("`tuneforge meta` needs a meta: section (see docs/meta-learning.md)")
    strategy = resolve_strategy(config)
    if strategy.kind == "deepspeed":
        raise DistributedError(
            "`tuneforge meta` averages the meta-gradients over ranks itself and keeps a full copy of the "
            "encoder on each; DeepSpeed ZeRO is not supported for it. Launch it on one process or with "
            "DDP ranks (accelerate launch --multi_gpu / torchrun), without --use_deepspeed"
        )
    pm = plugins or build_plugins(config)
    pm.build_registries()
    plan = MetaPlan(config, meta, pm, pm.meta_algorithms.get(meta.algorithm),
                    _task_for(config, pm, config.task, "task"))
    for group in ("tasks", "val_tasks", "test_tasks"):
        plan.listed[group] = []
        for i, spec in enumerate(getattr(meta, group)):
            sub = config.model_copy(update={"task": spec.task, "data": spec.data})
            where = f"meta.{group}[{i}] ({spec.name})"
            if spec.data.train is None:
                raise ConfigError(f"{where}: data.train is required")
            plan.listed[group].append(ListedTask(spec, _task_for(sub, pm, spec.task, where), sub, {}))
    # every data file read here, so a malformed line fails before any model loads
    plan.records = read_data_files(config, plan.main_task)
    for listed in plan.listed.values():
        for item in listed:
            item.records = read_data_files(item.config, item.task)
    if meta.learn == "adapter":
        if config.adapter is None:
            raise ConfigError("meta.learn=adapter needs an adapter: section (e.g. adapter: {type: lora})")
        plan.adapter = make_adapter(config, pm)
        plan.adapter.preflight()
    elif config.adapter is not None:
        raise ConfigError(f"an adapter: section is set but meta.learn={meta.learn}; set meta.learn: adapter")
    if check_output:
        check_output_dir(config)
    return plan


# -- the task collection --------------------------------------------------------------


def _pool(name: str, task: Task, config: RunConfig, read: dict[str, list[dict[str, Any]]], store: ExampleStore,
          seed: int) -> LabelPool:
    import random

    from tuneforge.builders import load_records

    records = [r for split in load_records(config, task, read).values() for r in split]
    cap = config.meta.max_examples_per_label if config.meta else None
    text_field, label_field = task.options.text_field, task.options.label_field  # type: ignore[attr-defined]
    source = config.data.train or name
    grouped: dict[str, list[str]] = {}
    for i, rec in enumerate(records):
        if rec.get(text_field) is None or rec.get(label_field) is None:
            raise DataError(f"{record_origin(rec, source, i)}: needs fields '{text_field}' and '{label_field}'")
        grouped.setdefault(str(rec[label_field]), []).append(str(rec[text_field]))
    by_label = {}
    for label in sorted(grouped):
        texts = grouped[label]
        if cap is not None and len(texts) > cap:
            texts = random.Random(f"cap:{seed}:{name}:{label}").sample(texts, cap)
        by_label[label] = store.add(texts)
    return LabelPool(name, by_label)


def build_collection(plan: MetaPlan, store: ExampleStore, seed: int) -> tuple[dict[str, list[LabelPool]], dict[str, Any]]:
    """Meta-train / meta-val / meta-test pools and a JSON description of the split."""
    meta, config = plan.meta, plan.config
    if meta.collection == "labels":
        full = _pool(plan.config.task.name, plan.main_task, config, plan.records, store, seed)
        train, val, test = split_labels(full.labels, meta.val_labels, meta.test_labels, seed)
        pools = {"train": [full.subset("meta-train", train)], "val": [full.subset("meta-val", val)],
                 "test": [full.subset("meta-test", test)]}
        return pools, {"collection": "labels", "train": train, "val": val, "test": test}
    pools = {}
    for group, key in (("tasks", "train"), ("val_tasks", "val"), ("test_tasks", "test")):
        pools[key] = [_pool(item.spec.name, item.task, item.config, item.records, store, seed)
                      for item in plan.listed[group]]
    described = {key: {p.name: p.labels for p in value} for key, value in pools.items()}
    return pools, {"collection": "tasks", **described}
