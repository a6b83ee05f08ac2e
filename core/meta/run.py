"""``tuneforge meta``: build the task collection, meta-train a start, train the
multi-task baseline, and compare all starts on the same held-out episodes.

Run directory (``output.dir``): ``config.yaml``, ``metrics.jsonl`` (trackers),
``meta_start/`` (the meta-learned encoder in Hugging Face format; use it as
``model.name_or_path``), ``multitask_start/``, ``splits.json`` (the label split /
task lists) and ``results.json`` (the table with 95% confidence intervals).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tuneforge.config import MetaConfig, MetaSourceTask, RunConfig, dump_config
from tuneforge.data import record_origin
from tuneforge.errors import ConfigError, DataError
from tuneforge.meta.algorithm import MetaAlgorithm
from tuneforge.meta.episodes import EpisodeSampler, LabelPool, mean_ci95, split_labels
from tuneforge.meta.learner import EpisodeLearner, ExampleStore
from tuneforge.meta.loops import EpisodeScores, meta_test, meta_train, multitask_train
from tuneforge.plugin_manager import PluginManager
from tuneforge.tasks import Task

log = logging.getLogger("tuneforge.meta")
SPLITS = ("train", "validation", "test")


@dataclass
class MetaPlan:
    """What preflight resolved for a meta run."""

    config: RunConfig
    meta: MetaConfig
    plugins: PluginManager
    algorithm_cls: type[MetaAlgorithm]
    main_task: Task
    listed: dict[str, list[tuple[MetaSourceTask, Task]]] = field(default_factory=dict)
    adapter: Any = None


def _task_for(config: RunConfig, pm: PluginManager, task_cfg: Any, where: str) -> Task:
    cls = pm.tasks.get(task_cfg.name)
    options = cls.parse_options(task_cfg.options(), source=where)
    for key in ("text_field", "label_field"):
        if not hasattr(options, key):
            raise ConfigError(
                f"{where}: task '{task_cfg.name}' has no '{key}' option; meta-learning needs a text "
                "classification task (e.g. task.name: classification)"
            )
    if getattr(options, "text_pair_field", None):
        raise ConfigError(f"{where}: text pairs (text_pair_field) are not supported by meta-learning yet")
    return cls(options, config)


def preflight_meta(config: RunConfig, plugins: PluginManager | None = None, *, check_output: bool = True) -> MetaPlan:
    """Check the algorithm, tasks, adapter, data files and output dir; no model is loaded."""
    from tuneforge.run import build_plugins, check_output_dir

    meta = config.meta
    if meta is None:
        raise ConfigError("`tuneforge meta` needs a meta: section (see docs/meta-learning.md)")
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
            plan.listed[group].append((spec, _task_for(sub, pm, spec.task, where)))
    datas = [config.data] + [spec.data for specs in plan.listed.values() for spec, _ in specs]
    for data in datas:
        for split in SPLITS:
            path = getattr(data, split)
            if path is not None and not Path(path).exists():
                raise DataError(f"data.{split}: file '{path}' does not exist")
    if meta.learn == "adapter":
        if config.adapter is None:
            raise ConfigError("meta.learn=adapter needs an adapter: section (e.g. adapter: {type: lora})")
        adapter_cls = pm.adapters.get(config.adapter.type)
        plan.adapter = adapter_cls(adapter_cls.parse_options(config.adapter.options(), config.source), config)
        plan.adapter.preflight()
    elif config.adapter is not None:
        raise ConfigError(f"an adapter: section is set but meta.learn={meta.learn}; set meta.learn: adapter")
    if check_output:
        check_output_dir(config)
    return plan


# -- the task collection --------------------------------------------------------------


def _pool(name: str, task: Task, config: RunConfig, store: ExampleStore, seed: int) -> LabelPool:
    import random

    from tuneforge.run import load_records

    records = [r for split in load_records(config, task).values() for r in split]
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
        full = _pool(plan.config.task.name, plan.main_task, config, store, seed)
        train, val, test = split_labels(full.labels, meta.val_labels, meta.test_labels, seed)
        pools = {"train": [full.subset("meta-train", train)], "val": [full.subset("meta-val", val)],
                 "test": [full.subset("meta-test", test)]}
        return pools, {"collection": "labels", "train": train, "val": val, "test": test}
    pools = {}
    for group, key in (("tasks", "train"), ("val_tasks", "val"), ("test_tasks", "test")):
        pools[key] = [
            _pool(spec.name, task, config.model_copy(update={"task": spec.task, "data": spec.data}), store, seed)
            for spec, task in plan.listed[group]
        ]
    described = {key: {p.name: p.labels for p in value} for key, value in pools.items()}
    return pools, {"collection": "tasks", **described}


# -- the command ------------------------------------------------------------------------


def _setting(ways: int, shots: int) -> str:
    return f"{ways}-way {shots}-shot"


def run_meta(config: RunConfig, plugins: PluginManager | None = None) -> dict[str, Any]:
    """Meta-train, run the baselines, meta-test; returns (and writes) results.json."""
    plan = preflight_meta(config, plugins)
    with plan.plugins.blaming():
        return _run_meta(plan)


def _run_meta(plan: MetaPlan) -> dict[str, Any]:
    from transformers import AutoModel

    from tuneforge.distributed import Runtime
    from tuneforge.run import check_rank_consistency, setup_logging
    from tuneforge.tracking import Trackers

    config = plan.config
    meta = plan.meta
    runtime = Runtime(config)
    setup_logging(runtime.is_main)
    check_rank_consistency(config, plan.plugins, runtime)
    seed = meta.seed if meta.seed is not None else config.training.seed
    run_dir = Path(config.output.dir)
    started = time.perf_counter()

    store = ExampleStore()
    pools, split_info = build_collection(plan, store, seed)
    train_sampler = EpisodeSampler(pools["train"], meta.ways, meta.shots, meta.query, seed, where="meta-train")
    val_sampler = (EpisodeSampler(pools["val"], meta.ways, meta.shots, meta.query, seed + 1, where="meta-val")
                   if pools["val"] and meta.val_episodes else None)
    test_samplers = {
        (w, k): EpisodeSampler(pools["test"], w, k, meta.eval.query, seed + 2, where=f"meta-test {_setting(w, k)}")
        for w in meta.eval.ways for k in meta.eval.shots
    }
    if runtime.is_main:
        dump_config(config, run_dir / "config.yaml")
        (run_dir / "splits.json").write_text(json.dumps(split_info, indent=2), encoding="utf-8")

    task = plan.main_task
    tokenizer = task.load_tokenizer()
    store.tokenize(tokenizer, config.data.max_length)
    if plan.adapter is not None:
        task.extra_model_kwargs.update(plan.adapter.model_kwargs())
    encoder = AutoModel.from_pretrained(task.model_path(), **task.pretrained_kwargs())
    if plan.adapter is not None:
        encoder = plan.adapter.apply(encoder, task)
    learner = EpisodeLearner(encoder, store, learn=meta.learn, top_layers=meta.top_layers, pooling=meta.pooling,
                             head_scale=meta.head_scale, pad_token_id=tokenizer.pad_token_id or 0,
                             device=runtime.device)
    if meta.learn == "top_layers":
        t0 = time.perf_counter()
        learner.precompute(range(len(store)))
        log.info("cached lower-layer states of %d examples in %.1fs", len(store), time.perf_counter() - t0)
    trackers = Trackers([cls(run_dir, config.model_dump(mode="json"))
                         for cls in (plan.plugins.trackers.get(n) for n in config.trackers)] if runtime.is_main else [])
    log.info("meta: %d examples, labels train/val/test = %s; %d meta-learned parameters (learn=%s)", len(store),
             "/".join(str(sum(len(p.labels) for p in pools[k])) for k in ("train", "val", "test")),
             learner.num_parameters, meta.learn)

    def score_val(step: int, start: torch.Tensor, name: str) -> float:
        assert val_sampler is not None
        scores = meta_test(learner, start, val_sampler, meta.val_episodes, steps=meta.inner_steps, lr=meta.inner_lr,
                           optimizer=meta.inner_optimizer, runtime=runtime, seed=seed)
        summary = scores.summary()
        trackers.log_metrics(step, {f"{name}_accuracy": summary["accuracy"], f"{name}_ci95": summary["ci95"]}, "meta_val")
        return summary["accuracy"]

    every = config.training.log_every_n_steps

    def log_meta(step: int, metrics: dict[str, float]) -> None:
        if step % every == 0 or step == meta.meta_steps:
            trackers.log_metrics(step, metrics, "meta_train")
            log.info("meta step %d/%d loss=%.4f", step, meta.meta_steps, metrics["loss"])
        if val_sampler is not None and meta.val_every and step % meta.val_every == 0 and step < meta.meta_steps:
            score_val(step, learner.flat(), "meta")

    status = "failed"
    try:
        theta0 = learner.flat()
        algorithm = plan.algorithm_cls(meta)
        meta_hist = meta_train(learner, algorithm, train_sampler, meta, runtime, seed=seed, on_step=log_meta)
        starts = {"meta": learner.flat()}
        info = {"algorithm": meta.algorithm, "learn": meta.learn, "meta_steps": meta.meta_steps,
                "base_model": config.model.name_or_path, "splits": "splits.json"}
        if runtime.is_main:
            learner.export(run_dir / "meta_start", tokenizer, info)
        starts["pretrained"] = theta0
        mt_seconds = None
        if "multitask" in meta.eval.baselines:
            learner.load_flat(theta0)

            def log_mt(step: int, metrics: dict[str, float]) -> None:
                if step % every == 0:
                    trackers.log_metrics(step, metrics, "multitask_train")

            mt_hist = multitask_train(learner, pools["train"], meta, runtime, seed=seed, on_step=log_mt)
            mt_seconds = mt_hist.seconds
            starts["multitask"] = learner.flat()
            if runtime.is_main:
                learner.export(run_dir / "multitask_start", tokenizer, {**info, "algorithm": "multitask"})
        names = ["meta"] + [b for b in ("pretrained", "multitask") if b in meta.eval.baselines]

        results: dict[str, Any] = {
            "status": "completed", "algorithm": meta.algorithm, "learn": meta.learn,
            "meta_train_seconds": round(meta_hist.seconds, 2),
            "multitask_train_seconds": None if mt_seconds is None else round(mt_seconds, 2),
            "meta_start": str(run_dir / "meta_start"), "world_size": runtime.num_processes,
            "final_meta_loss": meta_hist.steps[-1]["loss"] if meta_hist.steps else None,
        }
        if val_sampler is not None:
            results["meta_val"] = {name: score_val(meta.meta_steps, starts[name], name) for name in names}
        steps = meta.eval.steps if meta.eval.steps is not None else meta.inner_steps
        lr = meta.eval.lr or meta.inner_lr
        table: dict[str, Any] = {}
        for (ways, shots), sampler in test_samplers.items():
            row: dict[str, Any] = {}
            scores: dict[str, EpisodeScores] = {}
            for name in names:
                scores[name] = meta_test(learner, starts[name], sampler, meta.eval.episodes, steps=steps, lr=lr,
                                         optimizer=meta.inner_optimizer, batch_size=meta.eval.batch_size,
                                         runtime=runtime, seed=seed)
                row[name] = {k: round(v, 4) if isinstance(v, float) else v for k, v in scores[name].summary().items()}
                row[name]["seconds"] = round(scores[name].seconds, 2)
            for base in names[1:]:
                diff, ci = mean_ci95([a - b for a, b in zip(scores["meta"].accuracies, scores[base].accuracies)])
                row[f"meta_minus_{base}"] = {"accuracy": round(diff, 4), "ci95": round(ci, 4)}
            table[_setting(ways, shots)] = row
            trackers.log_metrics(meta.meta_steps, {f"{_setting(ways, shots)} {n}": row[n]["accuracy"] for n in names},
                                 "meta_test")
            log.info("%s: %s", _setting(ways, shots),
                     "  ".join(f"{n} {row[n]['accuracy']:.3f}±{row[n]['ci95']:.3f}" for n in names))
        results["meta_test"] = table
        results["fine_tune"] = {"steps": steps, "lr": lr, "optimizer": meta.inner_optimizer,
                                "episodes": meta.eval.episodes, "query_per_class": meta.eval.query}
        results["wall_seconds"] = round(time.perf_counter() - started, 2)
        if runtime.is_main:
            (run_dir / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
        status = "completed"
        return results
    finally:
        trackers.finish(status)
        runtime.end()


def format_table(results: dict[str, Any]) -> str:
    """A plain-text table of meta-test accuracy (mean ± 95% CI) per setting and start."""
    rows = results["meta_test"]
    names = [n for n in ("meta", "pretrained", "multitask") if any(n in r for r in rows.values())]
    lines = ["setting".ljust(16) + "".join(n.rjust(18) for n in names) + "meta-pretrained".rjust(20)]
    for setting, row in rows.items():
        cells = "".join(f"{row[n]['accuracy'] * 100:7.2f} ± {row[n]['ci95'] * 100:5.2f}    " for n in names)
        diff = row.get("meta_minus_pretrained")
        tail = f"{diff['accuracy'] * 100:+7.2f} ± {diff['ci95'] * 100:5.2f}" if diff else ""
        lines.append(setting.ljust(16) + cells + tail.rjust(20))
    return "\n".join(lines)
