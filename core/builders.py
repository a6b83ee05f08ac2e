"""From a validated config to the parts of a run: plugins, task, records, model, loaders,
optimizer and schedule.

Every entry point (``train``, ``evaluate``/``predict``, ``export``, search trials, meta runs)
builds through these functions, so a feature that changes how a part is built lands once.
A config gets here only through :func:`tuneforge.config.load_config` or
:func:`tuneforge.config.validate`.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import torch

from tuneforge.config import RunConfig
from tuneforge.data import load_hub_split, make_loader, require_fields, sample_per_label, stratified_folds
from tuneforge.errors import ConfigError, DataError
from tuneforge.plugin_manager import PluginManager
from tuneforge.tasks import Task

log = logging.getLogger("tuneforge")
SPLITS = ("train", "validation", "test")


def build_plugins(config: RunConfig) -> PluginManager:
    """A fresh plugin manager with the entry points, the config's ``plugins`` and its registries."""
    return PluginManager.default(config.plugins).build_registries()


def make_plugin(cls: Any, raw_options: dict[str, Any], config: RunConfig, source: str | None = None) -> Any:
    """An instance of a task or adapter plugin class: its options validated, then ``cls(options, config)``."""
    return cls(cls.parse_options(raw_options, source or config.source), config)


def make_task(config: RunConfig, plugins: PluginManager, section: Any = None, source: str | None = None) -> Task:
    """The task plugin of ``section`` (default ``config.task``) for ``config``."""
    section = section if section is not None else config.task
    return make_plugin(plugins.tasks.get(section.name), section.options(), config, source)  # type: ignore[no-any-return]


def make_adapter(config: RunConfig, plugins: PluginManager) -> Any:
    """The adapter plugin of ``config.adapter``, or None without an ``adapter:`` section."""
    if config.adapter is None:
        return None
    return make_plugin(plugins.adapters.get(config.adapter.type), config.adapter.options(), config)


# -- data ---------------------------------------------------------------------------------


def load_records(
    config: RunConfig, task: Task, read: dict[str, list[dict[str, Any]]] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """The records of each split: local files (``read``: already read by preflight), hub
    splits, the K-shot draw and cross-validation fold (:func:`few_shot_records`), a validation
    split carved from train, then the ``max_*_samples`` caps."""
    d = config.data
    records: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        path = getattr(d, split)
        if path is not None:
            records[split] = read[split] if read and split in read else task.read(path, split)
        elif d.hf_dataset is not None and split in d.hf_splits and (d.train is None or split != "train"):
            try:
                records[split] = load_hub_split(d.hf_dataset, d.hf_subset, d.hf_splits[split])
            except DataError:
                if split == "train":
                    raise
    if not records.get("train"):
        raise DataError("the training split is empty")
    if d.shots_per_label is not None or d.cv_folds is not None:
        records = few_shot_records(config, task, records)
    if d.validation_fraction is not None and "validation" not in records:
        train = records["train"]
        order = list(range(len(train)))
        random.Random(config.training.seed).shuffle(order)
        n_val = max(1, int(len(train) * d.validation_fraction))
        records["validation"] = [train[i] for i in sorted(order[:n_val])]
        records["train"] = [train[i] for i in sorted(order[n_val:])]
    limits = {"train": d.max_train_samples, "validation": d.max_eval_samples, "test": d.max_test_samples}
    return {k: v[: limits[k]] if limits[k] else v for k, v in records.items()}


def few_shot_records(
    config: RunConfig, task: Task, records: dict[str, list[dict[str, Any]]]
) -> dict[str, list[dict[str, Any]]]:
    """``data.shots_per_label``: keep exactly K training records per label
    (:func:`~tuneforge.data.sample_per_label`, seeded by ``data.shots_seed``); then with
    ``data.cv_fold``: that stratified fold of the (K-shot) training records becomes validation
    and the other folds train (:func:`~tuneforge.data.stratified_folds`). Other splits are
    returned as they are; a task without a ``label_field`` option folds unstratified."""
    d = config.data
    label_field = getattr(task.options, "label_field", None)
    source = d.train or "train split"
    train = records["train"]
    if d.shots_per_label is not None:
        if label_field is None:
            raise ConfigError(f"data.shots_per_label: task '{config.task.name}' has no label_field option, so there "
                              "are no labels to draw K examples of; remove data.shots_per_label")
        require_fields(train, [label_field], source)
        train = [train[i] for i in sample_per_label([str(r[label_field]) for r in train], d.shots_per_label,
                                                    d.shots_seed, source)]
        log.info("data.shots_per_label=%d: %d training examples kept (seed %d)", d.shots_per_label, len(train),
                 d.shots_seed)
    out = {**records, "train": train}
    if d.cv_folds is not None and d.cv_fold is not None:
        if label_field is not None:
            require_fields(train, [label_field], source)
        labels = [str(r[label_field]) if label_field else "" for r in train]
        held_out = set(stratified_folds(labels, d.cv_folds, d.shots_seed, source)[d.cv_fold])
        out["validation"] = [r for i, r in enumerate(train) if i in held_out]
        out["train"] = [r for i, r in enumerate(train) if i not in held_out]
    return out


def build_loaders(
    config: RunConfig, task: Task, tokenizer: Any, features: dict[str, list[dict[str, Any]]]
) -> tuple[Any, dict[str, Any]]:
    """(train loader, {split: eval loader}) for the splits that have features."""
    t = config.training
    collate = lambda feats: task.collate(feats, tokenizer)  # noqa: E731
    lengths = [task.feature_length(f) for f in features["train"]] if t.group_by_length else None
    train_loader = make_loader(features["train"], t.batch_size, collate, shuffle=True, seed=t.seed,
                               lengths=lengths, num_workers=t.num_workers)
    return train_loader, build_eval_loaders(config, task, tokenizer, features)


def build_eval_loaders(
    config: RunConfig, task: Task, tokenizer: Any, features: dict[str, list[dict[str, Any]]],
    batch_size: int | None = None,
) -> dict[str, Any]:
    """An in-order loader per split of ``features`` other than train (validation, test, predict...)."""
    collate = lambda feats: task.collate(feats, tokenizer)  # noqa: E731
    return {
        split: make_loader(feats, batch_size or config.eval_batch_size(), collate, shuffle=False,
                           num_workers=config.training.num_workers)
        for split, feats in features.items() if split != "train" and feats
    }


# -- model --------------------------------------------------------------------------------


def build_model(config: RunConfig, task: Task, tokenizer: Any, adapter: Any = None) -> torch.nn.Module:
    """The task's model (after ``task.prepare``), gradient checkpointing as configured, then the adapter."""
    if adapter is not None:
        task.extra_model_kwargs.update(adapter.model_kwargs())
    model = task.build_model(tokenizer)
    if config.distributed.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
    if adapter is not None:
        model = adapter.apply(model, task)
    return model


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
        model_cfg = model_cfg.model_copy(update={"name_or_path": str(model_dir), "revision": None, "gguf_file": None})
    if (model_dir / "tokenizer_config.json").is_file():
        model_cfg = model_cfg.model_copy(update={"tokenizer": str(model_dir)})
    task = make_task(config.model_copy(update={"model": model_cfg}), pm)
    task.load_state(model_dir)
    tokenizer = task.load_tokenizer()
    model = task.build_model(tokenizer)
    if has_adapter:
        if config.adapter is None:
            raise ConfigError(f"'{model_dir}' holds an adapter, but the run config has no adapter: section to load it")
        model = make_adapter(config, pm).load(model, model_dir, task)
    model.eval()
    return task, tokenizer, model


# -- optimisation ---------------------------------------------------------------------------


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


def setup_logging(is_main: bool) -> None:
    """INFO on the main process, WARNING elsewhere; accelerate/DeepSpeed at WARNING."""
    level = logging.INFO if is_main else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("tuneforge").setLevel(level)
    for noisy in ("accelerate", "deepspeed", "DeepSpeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
