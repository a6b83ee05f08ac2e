"""One training run, from a validated config to a run directory.

``preflight`` checks everything cheap (plugins, their options, files, output dir)
before any process group or model exists; ``train`` builds the components and
hands them to :func:`tuneforge.loop.fit`.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tuneforge import jsonio
from tuneforge.adapters import describe_parameters
from tuneforge.checkpoint import CheckpointManager, read_state
from tuneforge.config import RunConfig, diff_keys, dump_config
from tuneforge.data import load_hub_split, make_loader, steps_per_epoch
from tuneforge.errors import CheckpointError, ConfigError, DataError, DistributedError, TuneforgeError
from tuneforge.loop import FitResult, RunContext, TrainState, evaluate, fit, total_training_steps
from tuneforge.plugin_manager import PluginManager
from tuneforge.tasks import Task, check_metric_names
from tuneforge.tracking import Tracker, Trackers

log = logging.getLogger("tuneforge")
SPLITS = ("train", "validation", "test")


@dataclass
class Plan:
    """What preflight resolved: the plugin classes and their validated options."""

    config: RunConfig
    plugins: PluginManager
    task_cls: type[Task]
    task_options: Any
    adapter_cls: Any = None
    adapter_options: Any = None
    tracker_classes: list[type[Tracker]] = field(default_factory=list)
    strategy: Any = None  # tuneforge.distributed.Strategy: single / ddp / deepspeed, resolved before launch

    def make_task(self) -> Task:
        return self.task_cls(self.task_options, self.config)


def build_plugins(config: RunConfig) -> PluginManager:
    return PluginManager.default(config.plugins).build_registries()


def preflight(config: RunConfig, plugins: PluginManager | None = None, *, check_output: bool = True) -> Plan:
    """Validate plugin names/options, data files and the output dir. Cheap; no torch work."""
    pm = plugins or build_plugins(config)
    pm.build_registries()
    task_cls = pm.tasks.get(config.task.name)
    task_options = task_cls.parse_options(config.task.options(), config.source)
    check_metric_names(task_cls, config, pm.metrics)
    plan = Plan(config, pm, task_cls, task_options)
    if config.adapter is not None:
        plan.adapter_cls = pm.adapters.get(config.adapter.type)
        plan.adapter_options = plan.adapter_cls.parse_options(config.adapter.options(), config.source)
        plan.adapter_cls(plan.adapter_options, config).preflight()
    plan.tracker_classes = [pm.trackers.get(name) for name in config.trackers]
    from tuneforge.distributed import resolve_strategy  # cheap: reads the env and the DeepSpeed JSON

    plan.strategy = resolve_strategy(config)
    for tracker_cls in plan.tracker_classes:  # a missing package gives an install hint, not a traceback
        tracker_cls(Path(config.output.dir), {}).check_available()
    for split in SPLITS:
        path = getattr(config.data, split)
        if path is not None and not Path(path).exists():
            raise DataError(
                f"data.{split}: file '{path}' does not exist; fix the path (in a config file it is relative "
                "to the file's directory, on the command line to the current directory)"
            )
    check_local_paths(config)
    metric = config.evaluation.metric
    has_eval = config.data.validation or config.data.validation_fraction or config.data.hf_dataset
    if metric is None and has_eval and config.evaluation.strategy != "no" and not task_cls.primary_metric:
        raise ConfigError(f"task '{config.task.name}' has no primary metric; set evaluation.metric")
    if check_output:
        check_output_dir(config)
    return plan


def check_local_paths(config: RunConfig) -> None:
    """A local model/tokenizer directory or an explicit resume checkpoint must exist, and a hub
    name must resolve on the hub or in its cache."""
    from tuneforge.hub import check_hub_name, resolve_pretrained

    for key in ("name_or_path", "tokenizer"):
        name = getattr(config.model, key)
        if name is None:
            continue
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


# -- data --------------------------------------------------------------------------


def load_records(config: RunConfig, task: Task) -> dict[str, list[dict[str, Any]]]:
    d = config.data
    records: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        path = getattr(d, split)
        if path is not None:
            records[split] = task.read(path, split)
        elif d.hf_dataset is not None and split in d.hf_splits and (d.train is None or split != "train"):
            try:
                records[split] = load_hub_split(d.hf_dataset, d.hf_subset, d.hf_splits[split])
            except DataError:
                if split == "train":
                    raise
    if not records.get("train"):
        raise DataError("the training split is empty")
    if d.validation_fraction is not None and "validation" not in records:
        train = records["train"]
        order = list(range(len(train)))
        random.Random(config.training.seed).shuffle(order)
        n_val = max(1, int(len(train) * d.validation_fraction))
        records["validation"] = [train[i] for i in sorted(order[:n_val])]
        records["train"] = [train[i] for i in sorted(order[n_val:])]
    limits = {"train": d.max_train_samples, "validation": d.max_eval_samples, "test": d.max_test_samples}
    return {k: v[: limits[k]] if limits[k] else v for k, v in records.items()}


# -- optimisation ----------------------------------------------------------------------


def build_optimizer(model: torch.nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and normalisation weights (1-d parameters)."""
    t = config.training
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=t.lr, betas=t.betas, eps=t.eps)


def build_scheduler(optimizer: torch.optim.Optimizer, config: RunConfig, total_steps: int) -> Any:
    from transformers import get_scheduler

    t = config.training
    warmup = t.warmup_steps + int(t.warmup_ratio * total_steps)
    name = {"constant": "constant_with_warmup"}.get(t.scheduler, t.scheduler)
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


# -- the run ---------------------------------------------------------------------------


def check_rank_consistency(config: RunConfig, plugins: PluginManager, runtime: Any) -> None:
    """Every rank must run the same resolved config and plugin set."""
    if runtime.num_processes == 1:
        return
    mine = {"config": config.model_dump(mode="json"), "plugins": sorted(p.name for p in plugins.plugins)}
    everyone = runtime.all_gather_object(mine)
    reference = everyone[0]
    for rank, other in enumerate(everyone[1:], start=1):
        if other != reference:
            diff = [key.removeprefix("config.") for key in diff_keys(reference, other)]
            raise DistributedError(
                f"rank {rank} differs from rank 0 in: {', '.join(diff)}. Every rank must get the same "
                "config file, overrides and installed plugins."
            )


def resume_position(saved: dict[str, Any], world_size: int, batch_size: int, source: Path) -> int:
    """Per-rank micro-batches of the current epoch to skip when resuming ``saved``.

    The sampler order depends only on (seed, epoch) and rank r takes global batches
    r, r + W, ...; so the position is "samples of this epoch consumed", which maps to
    any world size whose global micro-batch divides it."""
    old_world = int(saved.get("world_size", 1))
    old_batch = int(saved.get("micro_batch_size") or batch_size)
    done = int(saved.get("batch_in_epoch", 0))
    if old_world == world_size and old_batch == batch_size:
        return done
    samples = done * old_world * old_batch
    if samples % (world_size * batch_size):
        raise DistributedError(
            f"checkpoint {source} stopped {samples} samples into epoch {saved.get('epoch', 0)} "
            f"({old_world} processes x batch {old_batch}); {world_size} processes x batch {batch_size} cannot "
            f"continue there exactly. Resume with a world size and training.batch_size whose product divides "
            f"{samples} (e.g. {old_world} x {old_batch})."
        )
    if old_world * old_batch != world_size * batch_size:
        log.warning("resuming with a global micro-batch of %d samples (checkpoint: %d); steps after the resume "
                    "see a different batch size", world_size * batch_size, old_world * old_batch)
    return samples // (world_size * batch_size)


def setup_logging(is_main: bool) -> None:
    level = logging.INFO if is_main else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("tuneforge").setLevel(level)
    for noisy in ("accelerate", "deepspeed", "DeepSpeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def train(config: RunConfig, plugins: PluginManager | None = None) -> dict[str, Any]:
    """Train, evaluate and export one run; returns the results written to results.json.

    An exception raised in a plugin's code (task, adapter, tracker) comes out as a
    :class:`PluginError` naming the plugin."""
    plan = preflight(config, plugins)
    with plan.plugins.blaming():
        return _train(plan)


def _train(plan: Plan) -> dict[str, Any]:
    from tuneforge.distributed import Runtime

    config = plan.config
    runtime = Runtime(config, plan.strategy)
    setup_logging(runtime.is_main)
    log.info("distributed: %s", runtime.strategy.describe())
    check_rank_consistency(config, plan.plugins, runtime)
    run_dir = Path(config.output.dir)
    checkpoints = CheckpointManager(run_dir, config.output.keep_last, is_main=runtime.is_main)
    resume_from = checkpoints.resolve(config.resume)
    if runtime.is_main:
        if resume_from is None and config.output.overwrite:
            shutil.rmtree(checkpoints.root, ignore_errors=True)
        elif resume_from is not None:
            resumed = read_state(resume_from)
            checkpoints.set_aside_after(int(resumed["step"]), resumed.get("best_step"))
        dump_config(config, run_dir / "config.yaml")
    runtime.barrier()

    task = plan.make_task()
    records = load_records(config, task)
    tokenizer = task.load_tokenizer()
    if resume_from is not None and task.load_state(run_dir):
        pass  # labels learned by the interrupted run, not re-derived
    else:
        task.prepare(records["train"])
    if runtime.is_main:
        task.save_state(run_dir)
    features = {split: task.encode(recs, tokenizer, split) for split, recs in records.items()}
    adapter = plan.adapter_cls(plan.adapter_options, config) if plan.adapter_cls is not None else None
    if adapter is not None:
        task.extra_model_kwargs.update(adapter.model_kwargs())
    model = task.build_model(tokenizer)
    if config.distributed.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
    if adapter is not None:
        model = adapter.apply(model, task)
    log.info(describe_parameters(model))

    t = config.training
    collate = lambda feats: task.collate(feats, tokenizer)  # noqa: E731
    lengths = [task.feature_length(f) for f in features["train"]] if t.group_by_length else None
    train_loader = make_loader(features["train"], t.batch_size, collate, shuffle=True, seed=t.seed,
                               lengths=lengths, num_workers=t.num_workers)
    eval_loaders = {
        split: make_loader(features[split], config.eval_batch_size(), collate, shuffle=False,
                           num_workers=t.num_workers)
        for split in ("validation", "test") if features.get(split)
    }
    optimizer = build_optimizer(model, config)
    model, optimizer, train_loader, *prepared = runtime.prepare(model, optimizer, train_loader, *eval_loaders.values())
    eval_loaders = dict(zip(eval_loaders, prepared))
    total_steps = total_training_steps(
        config, steps_per_epoch(len(train_loader) * runtime.num_processes, runtime.num_processes,
                                t.gradient_accumulation_steps)
    )
    scheduler = build_scheduler(optimizer, config, total_steps)
    runtime.register_for_checkpointing(scheduler)

    state = TrainState(world_size=runtime.num_processes, micro_batch_size=t.batch_size)
    if resume_from is not None:
        saved = read_state(resume_from)
        batch_in_epoch = resume_position(saved, runtime.num_processes, t.batch_size, resume_from)
        try:
            runtime.load_state(resume_from, world_size=int(saved.get("world_size", 1)))
        except TuneforgeError:
            raise
        except Exception as exc:  # passed its checksums, but does not fit this model/optimizer
            raise CheckpointError(
                f"checkpoint {resume_from} could not be loaded ({type(exc).__name__}: {exc}); was it written "
                "with another model, adapter or optimizer setup? Resume with the run's own config, or resume=never"
            ) from exc
        state = TrainState(**{**saved, "batch_in_epoch": batch_in_epoch,
                              "world_size": runtime.num_processes, "micro_batch_size": t.batch_size})
        log.info("resumed from %s at step %d", resume_from, state.step)

    trackers = Trackers(
        [cls(run_dir, config.model_dump(mode="json")) for cls in plan.tracker_classes] if runtime.is_main else []
    )
    for tracker in trackers.trackers:
        tracker.check_available()
    if resume_from is not None:
        trackers.resume(state.step)
    run = RunContext(config, run_dir, runtime, plan.plugins, task, model, tokenizer, state, trackers,
                     checkpoints, features, optimizer=optimizer, scheduler=scheduler)
    trackers.log_params(_run_params(config, runtime, model))
    started = time.perf_counter()
    status = "failed"
    try:
        result = fit(run, train_loader, eval_loaders.get("validation"), optimizer, scheduler, total_steps)
        status = result.status
        results = finish(run, result, eval_loaders.get("test"))
        results["wall_seconds"] = round(time.perf_counter() - started, 2)
        if runtime.is_main:
            (run_dir / "results.json").write_text(jsonio.dumps(results, indent=2), encoding="utf-8")
        return results
    except BaseException as exc:
        plan.plugins.call("tf_on_exception", run=run, exc=exc)
        raise
    finally:
        trackers.finish(status)
        runtime.end()


def finish(run: RunContext, result: FitResult, test_loader: Any) -> dict[str, Any]:
    """Load the best checkpoint, evaluate on test, export the model, and summarise."""
    rt, cfg = run.runtime, run.config
    best = run.checkpoints.best()
    if best is not None and best != run.checkpoints.complete()[-1]:
        rt.load_state(best)
    results: dict[str, Any] = {
        "status": result.status,
        "steps": result.state.step,
        "best_step": result.state.best_step,
        "best_metric": result.state.best_metric,
        "metric": cfg.evaluation.metric or run.task.primary_metric,
        "validation": result.last_metrics,
        "train_seconds": round(result.train_seconds, 2),
        "world_size": rt.num_processes,
        "nonfinite_skips": result.state.nonfinite_skips,
    }
    if test_loader is not None:
        metrics, outputs = evaluate(run, test_loader, "test")
        run.trackers.log_metrics(result.state.step, metrics, "test")
        run.plugins.call("tf_on_evaluate", run=run, step=result.state.step, split="test", metrics=metrics)
        results["test"] = metrics
        if rt.is_main:
            run.task.write_reports(outputs, "test", run.features["test"], run.run_dir)
        log.info("test " + " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
    if cfg.output.export:
        export_dir = run.run_dir / "model"
        rt.export_model(run.model, export_dir, run.tokenizer)
        if rt.is_main:
            run.task.save_state(export_dir)
        results["model_dir"] = str(export_dir)
    return results


def load_trained_model(
    config: RunConfig, model_dir: str | Path, plugins: PluginManager | None = None
) -> tuple[Task, Any, torch.nn.Module]:
    """(task with its saved state, tokenizer, model in eval mode) from an exported ``model_dir``:
    a full Hugging Face model, or the base model of ``config.model`` plus the adapter saved there
    (``adapter_config.json``), loaded by the run's adapter plugin."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ConfigError(f"model directory '{model_dir}' does not exist")
    pm = (plugins or build_plugins(config)).build_registries()
    has_adapter = (model_dir / "adapter_config.json").is_file()
    model_cfg = config.model
    if not has_adapter:
        model_cfg = model_cfg.model_copy(update={"name_or_path": str(model_dir), "revision": None})
    if (model_dir / "tokenizer_config.json").is_file():
        model_cfg = model_cfg.model_copy(update={"tokenizer": str(model_dir)})
    task_cls = pm.tasks.get(config.task.name)
    task = task_cls(task_cls.parse_options(config.task.options(), config.source), config.model_copy(update={"model": model_cfg}))
    task.load_state(model_dir)
    tokenizer = task.load_tokenizer()
    model = task.build_model(tokenizer)
    if has_adapter:
        if config.adapter is None:
            raise ConfigError(f"'{model_dir}' holds an adapter, but the run config has no adapter: section to load it")
        adapter_cls = pm.adapters.get(config.adapter.type)
        adapter = adapter_cls(adapter_cls.parse_options(config.adapter.options(), config.source), config)
        model = adapter.load(model, model_dir, task)
    model.eval()
    return task, tokenizer, model


def _run_params(config: RunConfig, runtime: Any, model: torch.nn.Module) -> dict[str, Any]:
    import platform

    import transformers

    from tuneforge import __version__
    from tuneforge.adapters import count_parameters

    trainable, total = count_parameters(model)
    return {
        "config": config.model_dump(mode="json"),
        "system": {
            "tuneforge": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "world_size": runtime.num_processes,
            "distributed": runtime.kind,
            "device": str(runtime.device),
            "hostname": platform.node(),
            "pid": os.getpid(),
        },
        "parameters": {"trainable": trainable, "total": total, "trainable_fraction": trainable / max(total, 1)},
    }
