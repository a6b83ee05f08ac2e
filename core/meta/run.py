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

from tuneforge import jsonio
from tuneforge.config import MetaConfig, MetaSourceTask, RunConfig, dump_config
from tuneforge.data import record_origin
from tuneforge.errors import ConfigError, DataError
from tuneforge.meta.algorithm import MetaAlgorithm
from tuneforge.meta.checkpoints import MetaCheckpoints
from tuneforge.meta.episodes import EpisodeSampler, LabelPool, mean_ci95, split_labels
from tuneforge.meta.learner import EpisodeLearner, ExampleStore
from tuneforge.meta.loops import EpisodeScores, meta_test, meta_train, multitask_steps, multitask_train
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
    checkpoints = MetaCheckpoints(config, runtime)
    saved = checkpoints.restore()
    trackers = Trackers([cls(run_dir, config.model_dump(mode="json"))
                         for cls in (plan.plugins.trackers.get(n) for n in config.trackers)] if runtime.is_main else [])
    if saved is not None:
        trackers.resume(saved.step)
    log.info("meta: %d examples, labels train/val/test = %s; %d meta-learned parameters (learn=%s)", len(store),
             "/".join(str(sum(len(p.labels) for p in pools[k])) for k in ("train", "val", "test")),
             learner.num_parameters, meta.learn)

    def score_val(step: int, named_starts: dict[str, torch.Tensor]) -> dict[str, float]:
        """Meta-val accuracy of each start, logged as one line."""
        assert val_sampler is not None
        line, accuracies = {}, {}
        for name, start in named_starts.items():
            summary = meta_test(learner, start, val_sampler, meta.val_episodes, steps=meta.inner_steps,
                                lr=meta.inner_lr, optimizer=meta.inner_optimizer, runtime=runtime, seed=seed).summary()
            line.update({f"{name}_accuracy": summary["accuracy"], f"{name}_ci95": summary["ci95"]})
            accuracies[name] = summary["accuracy"]
        trackers.log_metrics(step, line, "meta_val")
        return accuracies

    every = config.training.log_every_n_steps

    def log_meta(step: int, metrics: dict[str, float]) -> None:
        if step % every == 0 or step == meta.meta_steps:
            trackers.log_metrics(step, metrics, "meta_train")
            log.info("meta step %d/%d loss=%.4f", step, meta.meta_steps, metrics["loss"])
        if val_sampler is not None and meta.val_every and step % meta.val_every == 0 and step < meta.meta_steps:
            score_val(step, {"meta": learner.flat()})

    status = "failed"
    try:
        theta0 = learner.flat()
        starts: dict[str, torch.Tensor] = {"pretrained": theta0}
        done: dict[str, Any] = {}  # results of the finished phases
        if saved is not None:
            starts.update(saved.starts)
            done.update(saved.results)
        info = {"algorithm": meta.algorithm, "learn": meta.learn, "meta_steps": meta.meta_steps,
                "base_model": config.model.name_or_path, "splits": "splits.json"}

        if checkpoints.pending("meta_train", saved):
            resume = saved.phase if saved is not None and saved.name == "meta_train" else None
            if resume is not None:
                log.info("resuming meta-training after meta step %d of %d", resume["step"], meta.meta_steps)
            t_meta = time.perf_counter()
            meta_hist = meta_train(
                learner, plan.algorithm_cls(meta), train_sampler, meta, runtime, seed=seed, on_step=log_meta,
                resume=resume, checkpoint_every=checkpoints.every(meta.meta_steps),
                checkpoint=lambda step, state: checkpoints.save("meta_train", step, state, starts, {
                    **done, "meta_train_seconds": done.get("meta_train_seconds", 0.0) + time.perf_counter() - t_meta,
                    "final_meta_loss": state["loss"]}),
            )
            starts["meta"] = learner.flat()
            done["meta_train_seconds"] = round(done.get("meta_train_seconds", 0.0) + meta_hist.seconds, 2)
            if meta_hist.steps:
                done["final_meta_loss"] = meta_hist.steps[-1]["loss"]
            if runtime.is_main:
                learner.export(run_dir / "meta_start", tokenizer, info)

        if "multitask" in meta.eval.baselines and checkpoints.pending("multitask", saved):
            resume = saved.phase if saved is not None and saved.name == "multitask" else None
            learner.load_flat(theta0)
            offset = checkpoints.offset("multitask")

            def log_mt(step: int, metrics: dict[str, float]) -> None:
                if step % every == 0:
                    trackers.log_metrics(offset + step, metrics, "multitask_train")

            t_mt = time.perf_counter()
            mt_hist = multitask_train(
                learner, pools["train"], meta, runtime, seed=seed, on_step=log_mt, resume=resume,
                checkpoint_every=checkpoints.every(multitask_steps(meta)),
                checkpoint=lambda step, state: checkpoints.save("multitask", step, state, starts, {
                    **done, "multitask_train_seconds":
                    done.get("multitask_train_seconds", 0.0) + time.perf_counter() - t_mt}),
            )
            starts["multitask"] = learner.flat()
            done["multitask_train_seconds"] = round(done.get("multitask_train_seconds", 0.0) + mt_hist.seconds, 2)
            if runtime.is_main:
                learner.export(run_dir / "multitask_start", tokenizer, {**info, "algorithm": "multitask"})
        names = ["meta"] + [b for b in ("pretrained", "multitask") if b in meta.eval.baselines]

        eval_step = checkpoints.offset("evaluate")
        if val_sampler is not None and "meta_val" not in done:
            done["meta_val"] = score_val(eval_step, {name: starts[name] for name in names})
            checkpoints.save("evaluate", 0, {}, starts, done)
        steps = meta.eval.steps if meta.eval.steps is not None else meta.inner_steps
        lr = meta.eval.lr or meta.inner_lr
        table: dict[str, Any] = done.setdefault("meta_test", {})
        for i, ((ways, shots), sampler) in enumerate(test_samplers.items(), start=1):
            setting = _setting(ways, shots)
            if setting in table:
                continue
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
            table[setting] = row
            trackers.log_metrics(eval_step + i, {f"{setting} {n}": row[n]["accuracy"] for n in names}, "meta_test")
            log.info("%s: %s", setting, "  ".join(f"{n} {row[n]['accuracy']:.3f}±{row[n]['ci95']:.3f}" for n in names))
            checkpoints.save("evaluate", i, {}, starts, done)

        results: dict[str, Any] = {
            "status": "completed", "algorithm": meta.algorithm, "learn": meta.learn,
            "meta_train_seconds": done.get("meta_train_seconds"),
            "multitask_train_seconds": done.get("multitask_train_seconds"),
            "meta_start": str(run_dir / "meta_start"), "world_size": runtime.num_processes,
            "final_meta_loss": done.get("final_meta_loss"),
        }
        if "meta_val" in done:
            results["meta_val"] = done["meta_val"]
        results["meta_test"] = {_setting(w, k): table[_setting(w, k)] for w, k in test_samplers}
        results["fine_tune"] = {"steps": steps, "lr": lr, "optimizer": meta.inner_optimizer,
                                "episodes": meta.eval.episodes, "query_per_class": meta.eval.query}
        if saved is not None:
            results["resumed_from"] = str(saved.path)
        results["wall_seconds"] = round(time.perf_counter() - started, 2)
        if runtime.is_main:
            (run_dir / "results.json").write_text(jsonio.dumps(results, indent=2), encoding="utf-8")
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
