"""Batched inference with a trained model: what ``tuneforge evaluate`` and ``tuneforge predict`` share.

A model is found either from a run directory (its ``config.yaml`` + ``model/``) or from a
model directory plus a task name. Adapter runs (``model/adapter_config.json``) load the
base model of the run's config and the saved adapter through the adapter plugin
(:func:`tuneforge.builders.load_trained_model`). Inference runs in one process, on the GPU
when there is one, in batches, through the task's own ``encode``/``collate``/
``evaluation_step``, so it works for any task plugin.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneforge.builders import (
    build_eval_loaders,
    build_model,
    build_plugins,
    load_records,
    load_trained_model,
)
from tuneforge.config import RunConfig, load_config, load_config_dict
from tuneforge.errors import ConfigError
from tuneforge.evaluation import collect_outputs
from tuneforge.tasks import Task, score

log = logging.getLogger("tuneforge")


@dataclass
class TrainedModel:
    """A task, tokenizer and model ready for inference, and where they came from."""

    config: RunConfig
    task: Task
    tokenizer: Any
    model: torch.nn.Module
    model_dir: Path
    run_dir: Path | None
    device: torch.device
    plugins: Any = None  # the PluginManager the task came from (blames errors in plugin code)


def resolve_source(
    run: Path | None, model: Path | None, task: str | None, overrides: list[str], default_task: str | None = None
) -> tuple[RunConfig, Path, Path | None]:
    """(config, model directory, run directory or None) from ``--run``/``--model``/``--task``.

    ``default_task`` is the task of a ``--model`` outside a run directory when ``--task`` is not
    given (``tuneforge chat``: causal_lm); without one, ``--task`` is required there."""
    overrides = [*overrides, f"task.name={task}"] if task is not None else list(overrides)
    if run is not None:
        config_path = run / "config.yaml"
        if not config_path.is_file():
            raise ConfigError(f"'{run}' is not a run directory ({config_path.name} is missing); "
                              "pass the directory a `tuneforge train` wrote (its output.dir), or use --model")
        model_dir = run / "model"
        if not model_dir.is_dir():
            raise ConfigError(f"run '{run}' has no exported model ({model_dir} is missing): it did not finish "
                              "or was trained with output.export=false")
        return load_config(config_path, overrides), model_dir, run
    assert model is not None
    if not model.is_dir():
        raise ConfigError(f"--model '{model}' is not a directory; pass a Hugging Face model directory "
                          "(for example a run's model/)")
    parent_config = model.parent / "config.yaml"
    if task is None and parent_config.is_file():  # a run's model/ directory (or its merged export)
        return load_config(parent_config, overrides), model, model.parent
    task = task or default_task
    if task is None:
        raise ConfigError(f"--model '{model}' is not inside a run directory, so tuneforge cannot tell its task; "
                          "pass --task NAME (see `tuneforge plugins`)")
    # A config for loading only: data.train is required by the schema but never read here.
    raw = {"model": {"name_or_path": str(model)}, "task": {"name": task}, "data": {"train": str(model)}}
    return load_config_dict(raw, overrides, source="command line"), model, None


def quiet_transformers() -> None:
    """No "Loading weights" bars and load reports from transformers on the command line."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load(
    run: Path | None = None,
    model: Path | None = None,
    task: str | None = None,
    overrides: list[str] | None = None,
    plugins: Any = None,
) -> TrainedModel:
    """Load a trained model for inference (see :func:`resolve_source` for the arguments)."""
    return load_resolved(*resolve_source(run, model, task, list(overrides or [])), plugins=plugins)


def load_resolved(config: RunConfig, model_dir: Path, run_dir: Path | None, plugins: Any = None) -> TrainedModel:
    """:func:`load` from what :func:`resolve_source` returned (a command can check them first)."""
    pm = plugins or build_plugins(config)
    with pm.blaming():
        task_obj, tokenizer, net = load_trained_model(config, model_dir, pm)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net.to(device)
    return TrainedModel(config, task_obj, tokenizer, net, model_dir, run_dir, device, pm)


def load_base(config_path: Path, overrides: list[str] | None = None, plugins: Any = None) -> TrainedModel:
    """The untrained base model of a run config (``tuneforge evaluate --config``: zero-shot
    scores), built as :func:`tuneforge.run.train` builds it: preflight, the task prepared on the
    training records, the task's model without an adapter."""
    from tuneforge.preflight import preflight

    config = load_config(config_path, list(overrides or []))
    plan = preflight(config, plugins, check_output=False)
    with plan.plugins.blaming():
        task = plan.make_task()
        records = load_records(config, task, plan.records)
        tokenizer = task.load_tokenizer()
        task.prepare(records["train"])
        net = build_model(config, task, tokenizer).eval()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net.to(device)
    return TrainedModel(config, task, tokenizer, net, Path(task.model_path()), None, device, plan.plugins)


def infer(
    trained: TrainedModel, records: list[dict[str, Any]], split: str, batch_size: int | None = None
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Encode ``records`` as ``split`` and run the task's evaluation step over them in batches.

    Returns (features, outputs): outputs are the per-feature arrays the task's
    ``evaluation_step`` returns, concatenated in feature order.
    """
    blaming = trained.plugins.blaming() if trained.plugins is not None else contextlib.nullcontext()
    with blaming:
        return _infer(trained, records, split, batch_size)


def _infer(
    trained: TrainedModel, records: list[dict[str, Any]], split: str, batch_size: int | None
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    task, tokenizer = trained.task, trained.tokenizer
    features = task.encode(records, tokenizer, split)
    if not features:
        return features, {}
    loader = build_eval_loaders(trained.config, task, tokenizer, {split: features}, batch_size)[split]
    bar = None
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=len(loader), desc=split, unit="batch", dynamic_ncols=True)
    outputs = collect_outputs(trained.model, task, loader, device=trained.device,
                              on_batch=(lambda: bar.update(1)) if bar is not None else None)
    if bar is not None:
        bar.close()
    return features, outputs


def compute_metrics(
    trained: TrainedModel, outputs: dict[str, np.ndarray], split: str, features: list[dict[str, Any]]
) -> dict[str, float]:
    """The task's metrics, the mean per-example ``loss`` when the task returns one, and the
    run's ``evaluation.extra_metrics``."""
    registered = trained.plugins.metrics if trained.plugins is not None else None
    extra = trained.config.evaluation.extra_metrics if registered is not None else []
    return score(trained.task, outputs, split, features, extra, registered)


def predictions(
    trained: TrainedModel, outputs: dict[str, np.ndarray], features: list[dict[str, Any]],
    records: list[dict[str, Any]],
) -> list[dict[str, Any]] | None:
    """One prediction per record, or None when the task does not implement ``predictions``."""
    if not features:
        return []
    try:
        preds = trained.task.predictions(outputs, features, records)
    except NotImplementedError:
        return None
    if len(preds) != len(records):
        raise ConfigError(
            f"task '{trained.config.task.name}' returned {len(preds)} predictions for {len(records)} records; "
            "Task.predictions must return one per input record"
        )
    return preds


def write_predictions(path: Path, records: list[dict[str, Any]], preds: list[dict[str, Any]]) -> None:
    """JSON lines ``{"index": i, <prediction fields>, "input": <record>}`` in input order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for i, (record, pred) in enumerate(zip(records, preds)):
            fh.write(json.dumps({"index": i, **pred, "input": record}, default=str, ensure_ascii=False) + "\n")
