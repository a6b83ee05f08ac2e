"""The task interface: what a task plugin provides to the training loop.

A task turns records (dicts read from files or a hub dataset) into model inputs,
builds the model with the right head, computes the loss, and turns gathered
evaluation outputs into metrics. The loop never branches on the kind of task.

Minimal task::

    class MyTask(Task):
        name = "my-task"
        primary_metric = "accuracy"

        def build_model(self, tokenizer): ...
        def encode(self, records, tokenizer, split): ...
        def evaluation_step(self, model, batch): ...
        def compute_metrics(self, outputs, split, features): ...

and a plugin module registering it::

    @tuneforge.hookimpl
    def tf_register_tasks(register):
        register("my-task", MyTask)
"""

from __future__ import annotations

import fnmatch
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel

from tuneforge.config import RunConfig, Section, validate_options
from tuneforge.data import pad_features, read_records
from tuneforge.errors import ConfigError, DataError, did_you_mean
from tuneforge.generation import any_rank, decode_ids, generate, left_pad, unwrap_model  # noqa: F401 - public here too
from tuneforge.hub import pretrained_path

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class TaskOptions(Section):
    """Options of a task with none of its own. Subclass it to add fields."""


class Task(ABC):
    """Base class of task plugins. Instances live for one run."""

    name: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = TaskOptions
    primary_metric: ClassVar[str] = "loss"
    greater_is_better: ClassVar[bool] = False
    #: Splits whose records ``prepare`` may look at (labels are learned from train).
    label_source_split: ClassVar[str] = "train"
    #: Feature keys kept for ``compute_metrics``/``predictions`` (offsets, example ids,
    #: gold text) that the default ``collate`` leaves out of the model's batch.
    metadata_keys: ClassVar[frozenset[str]] = frozenset()
    #: Names ``compute_metrics`` returns (``fnmatch`` patterns allowed, e.g. ``f1_*``), checked
    #: against ``evaluation.metric`` before a run starts; empty: not declared (checked at the
    #: first evaluation). Add ``loss`` when ``evaluation_step`` returns a per-example loss.
    metric_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: BaseModel, config: RunConfig) -> None:
        self.options = options
        self.config = config
        #: ``from_pretrained`` arguments the run's adapter asks for (``Adapter.model_kwargs``).
        self.extra_model_kwargs: dict[str, Any] = {}

    @classmethod
    def metric_greater_is_better(cls, metric: str) -> bool:
        """Direction of ``metric`` when it selects the best model (``evaluation.greater_is_better``
        unset); default ``greater_is_better``. Override when a task's metrics go both ways."""
        return cls.greater_is_better

    @classmethod
    def parse_options(cls, raw: dict[str, Any], source: str = "config") -> BaseModel:
        return validate_options(cls.Options, raw, source, "task.")

    # -- data ---------------------------------------------------------------------

    def read(self, path: str, split: str) -> list[dict[str, Any]]:
        """Read one split's records. Override for task-specific formats (CoNLL, SQuAD)."""
        return read_records(path, self.config.data.format)

    def prepare(self, train_records: list[dict[str, Any]]) -> None:  # noqa: B027 - optional hook
        """Learn what the task needs from training records (e.g. the label set)."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state learned by ``prepare`` (saved beside the model)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore what ``state_dict`` returned (used instead of ``prepare`` on reload)."""

    def save_state(self, directory: str | Path) -> None:
        Path(directory, "task_state.json").write_text(json.dumps(self.state_dict(), indent=2), encoding="utf-8")

    def load_state(self, directory: str | Path) -> bool:
        path = Path(directory, "task_state.json")
        if not path.is_file():
            return False
        self.load_state_dict(json.loads(path.read_text(encoding="utf-8")))
        return True

    # -- model ----------------------------------------------------------------------

    def model_path(self) -> str:
        """The directory or hub name the model loads from (a GGUF model: its de-quantised cache)."""
        m = self.config.model
        return pretrained_path(m.name_or_path, m.gguf_file, load_dtype=m.dtype)

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        from transformers import AutoTokenizer

        m = self.config.model
        if m.tokenizer:
            name = pretrained_path(m.tokenizer, key="model.tokenizer", announce=False)
        else:  # the model's own; model_path() logs the GGUF line, once
            name = pretrained_path(m.name_or_path, m.gguf_file, announce=False)
        return AutoTokenizer.from_pretrained(name, revision=m.revision, trust_remote_code=m.trust_remote_code)

    def pretrained_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``from_pretrained`` built from ``model:``."""
        m = self.config.model
        kwargs: dict[str, Any] = {"revision": m.revision, "trust_remote_code": m.trust_remote_code}
        if m.dtype != "float32":
            kwargs["dtype"] = m.dtype if m.dtype == "auto" else getattr(torch, m.dtype)
        kwargs.update(m.config_overrides)
        kwargs.update(self.extra_model_kwargs)
        return kwargs

    @abstractmethod
    def build_model(self, tokenizer: PreTrainedTokenizerBase) -> torch.nn.Module:
        """Build the model with this task's head (called after ``prepare``)."""

    def build_encoder(self, tokenizer: PreTrainedTokenizerBase) -> torch.nn.Module:
        """The model without its task head (what ``tuneforge meta`` adapts; called after
        ``prepare``): by default the Hugging Face ``base_model`` of :meth:`build_model`."""
        model = self.build_model(tokenizer)
        return getattr(model, "base_model", model)

    def setup(self, runtime: Any, model: torch.nn.Module) -> None:  # noqa: B027 - optional hook
        """Called once on every rank by ``tuneforge train`` after ``runtime.prepare(model, ...)``
        and before a checkpoint is restored (``model`` still holds its initial weights): build
        what the task runs beside the trained model, e.g. a frozen reference model placed with
        ``runtime.prepare_frozen`` (see :class:`tuneforge.distributed.Runtime`). Every rank must
        run the same forward passes here (ZeRO-3 gathers weights collectively)."""

    # -- features -------------------------------------------------------------------

    @abstractmethod
    def encode(
        self, records: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, split: str
    ) -> list[dict[str, Any]]:
        """Tokenize records into features (dicts of lists/ints). May emit several per record."""

    def collate(self, features: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase) -> dict[str, torch.Tensor]:
        """Batch features with dynamic padding (pad to the longest in the batch); keys in
        ``metadata_keys`` are not batched."""
        if self.metadata_keys:
            features = [{k: v for k, v in f.items() if k not in self.metadata_keys} for f in features]
        return pad_features(features, pad_token_id=tokenizer.pad_token_id or 0)

    def feature_length(self, feature: dict[str, Any]) -> int:
        """Length used by ``training.group_by_length``."""
        return len(feature["input_ids"])

    # -- training and evaluation ----------------------------------------------------

    def training_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The scalar loss of one micro-batch; default: the model's own ``loss`` output."""
        return model(**batch).loss

    @abstractmethod
    def evaluation_step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-example outputs of one evaluation batch (first dim = batch), gathered over
        ranks by the loop. Include ``loss`` (per example) to get an eval loss."""

    @abstractmethod
    def compute_metrics(
        self, outputs: dict[str, np.ndarray], split: str, features: list[dict[str, Any]]
    ) -> dict[str, float]:
        """Metrics from the outputs of the whole split (in feature order, no duplicates)."""

    def metric_inputs(
        self, outputs: dict[str, np.ndarray], features: list[dict[str, Any]]
    ) -> tuple[list[Any], list[Any]] | None:
        """``(predictions, references)`` of a whole split, one item per example, for the metric
        functions other plugins register (``tf_register_metrics``, selected with
        ``evaluation.extra_metrics``). None: this task does not offer them."""
        return None

    def predictions(
        self, outputs: dict[str, np.ndarray], features: list[dict[str, Any]], records: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """One prediction dict per input record (used by ``tuneforge predict``)."""
        raise NotImplementedError(f"task '{self.name}' does not implement predictions()")

    def write_reports(  # noqa: B027 - optional hook
        self, outputs: dict[str, np.ndarray], split: str, features: list[dict[str, Any]], directory: Path
    ) -> None:
        """Write task-specific reports (per-class tables, samples) for ``split`` into ``directory``."""


def label_order(values: Iterable[str]) -> list[str]:
    """The distinct ``values`` sorted: integers numerically first (``1, 2, 10``), then the rest."""

    def key(value: str) -> tuple[bool, int, str]:
        number = value.lstrip("-").isdigit()
        return not number, int(value) if number else 0, value

    return sorted(set(values), key=key)


class LabelVocabTask(Task):
    """A task whose model predicts labels from a vocabulary: given in the task options, or
    learned from the training records by :meth:`prepare`, and saved in ``task_state.json`` so
    that a resumed run or a reloaded model maps its outputs to the same names.

    A subclass says what the vocabulary is made of (:meth:`vocab_values`) and, when its
    entries are not plain labels, what they are called (``vocab_field``, ``vocab_noun``).
    :attr:`labels` are the model's output names in id order: the vocabulary itself unless a
    subclass derives them (NER: ``O``, ``B-PER``, ``I-PER``, ... from the entity types)::

        class SentimentTask(LabelVocabTask):
            def vocab_values(self, train_records):
                return (str(r["label"]) for r in train_records)

            def build_model(self, tokenizer):
                return AutoModelForSequenceClassification.from_pretrained(
                    self.model_path(), **self.label_config(), **self.pretrained_kwargs())
    """

    #: The options field that may give the vocabulary in id order (null or absent: learned),
    #: and the vocabulary's key in ``task_state.json``.
    vocab_field: ClassVar[str] = "labels"
    #: What one entry is called in error messages.
    vocab_noun: ClassVar[str] = "label"
    #: The fewest entries a usable vocabulary has.
    min_vocab: ClassVar[int] = 2

    def __init__(self, options: BaseModel, config: RunConfig) -> None:
        super().__init__(options, config)
        self.vocab: list[str] = list(getattr(options, self.vocab_field, None) or [])

    @property
    def labels(self) -> list[str]:
        """The model's output labels in id order."""
        return self.vocab

    @abstractmethod
    def vocab_values(self, train_records: list[dict[str, Any]]) -> Iterable[str]:
        """Every vocabulary entry that occurs in ``train_records`` (repeats allowed)."""

    def prepare(self, train_records: list[dict[str, Any]]) -> None:
        """Learn the vocabulary (:func:`label_order` of :meth:`vocab_values`) unless the options
        or a saved state gave it; fewer than ``min_vocab`` entries is an error."""
        given = bool(self.vocab)
        if not given:
            self.vocab = label_order(self.vocab_values(train_records))
        if len(self.vocab) >= self.min_vocab:
            return
        need = f"task '{self.name}' needs at least {self.min_vocab} {self.vocab_noun}(s)"
        if given:
            raise ConfigError(f"task.{self.vocab_field}: {need}, got {self.vocab}")
        found = f"only {', '.join(self.vocab)}" if self.vocab else "none"
        raise DataError(f"{self.config.data.train or 'train split'}: {need} in the training data, found {found}")

    def check_known(self, value: str, where: str) -> None:
        """A :class:`DataError` at ``where`` if ``value`` is not in the vocabulary."""
        if value not in self.vocab:
            raise DataError(
                f"{where}: {self.vocab_noun} '{value}' is not one of the training {self.vocab_noun}s "
                f"{self.vocab}; add it to task.{self.vocab_field} or fix the record"
            )

    def label_ids(self) -> dict[str, int]:
        """Label name -> id."""
        return {name: i for i, name in enumerate(self.labels)}

    def label_config(self) -> dict[str, Any]:
        """``from_pretrained`` arguments of a head over :attr:`labels`: ``num_labels``,
        ``id2label``, ``label2id``."""
        return {"num_labels": len(self.labels), "id2label": dict(enumerate(self.labels)),
                "label2id": self.label_ids()}

    @staticmethod
    def label_outputs(logits: torch.Tensor, labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """``evaluation_step`` outputs of a head with one label per example: ``predictions`` and
        their softmax ``confidence``; given ``labels``, those and the per-example cross-entropy ``loss``."""
        logits = logits.float()
        probs = logits.softmax(-1)
        out = {"predictions": probs.argmax(-1), "confidence": probs.max(-1).values}
        if labels is not None:
            out["labels"] = labels
            out["loss"] = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        return out

    def state_dict(self) -> dict[str, Any]:
        return {self.vocab_field: self.vocab}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.vocab = list(state[self.vocab_field])


def offers_metric_inputs(task_cls: type[Task]) -> bool:
    return task_cls.metric_inputs is not Task.metric_inputs


def check_metric_names(task_cls: type[Task], config: RunConfig, registered: Any) -> None:
    """``evaluation.extra_metrics`` must be registered metrics the task can feed, and
    ``evaluation.metric`` one the task (or an extra metric) produces. Cheap; runs in preflight."""
    ev = config.evaluation
    for name in ev.extra_metrics:
        if name not in registered:
            available = ", ".join(registered) or "none"
            raise ConfigError(
                f"evaluation.extra_metrics: no metric named '{name}'{did_you_mean(name, registered)}; registered "
                f"metrics: {available} (a plugin adds one with tf_register_metrics)"
            )
    if ev.extra_metrics and not offers_metric_inputs(task_cls):
        raise ConfigError(
            f"evaluation.extra_metrics: task '{config.task.name}' does not offer predictions/references to "
            "registered metrics (it has no metric_inputs); remove evaluation.extra_metrics"
        )
    if ev.metric is None or not task_cls.metric_names:
        return
    known = [*task_cls.metric_names, *ev.extra_metrics]
    if not any(fnmatch.fnmatchcase(ev.metric, pattern) for pattern in known):
        raise ConfigError(
            f"evaluation.metric: task '{config.task.name}' does not produce '{ev.metric}'"
            f"{did_you_mean(ev.metric, known)}; it produces: {', '.join(known)}"
        )


def score(
    task: Task,
    outputs: dict[str, np.ndarray],
    split: str,
    features: list[dict[str, Any]],
    extra_metrics: list[str] | tuple[str, ...] = (),
    registered: Any = None,
) -> dict[str, float]:
    """All metrics of one split: the task's own, the mean per-example ``loss`` when the task
    returns one, and each of ``extra_metrics`` from the ``registered`` metric functions."""
    metrics = task.compute_metrics(outputs, split, features)
    if "loss" in outputs and "loss" not in metrics:
        metrics["loss"] = float(np.mean(outputs["loss"]))
    if extra_metrics:
        pair = task.metric_inputs(outputs, features)
        if pair is None:
            raise ConfigError(f"evaluation.extra_metrics: task '{task.name}' does not offer metric inputs")
        predictions, references = pair
        for name in extra_metrics:
            metrics[name] = float(registered.get(name)(predictions, references))
    return metrics
