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
        def compute_metrics(self, outputs, split, records): ...

and a plugin module registering it::

    @tuneforge.hookimpl
    def tf_register_tasks(register):
        register("my-task", MyTask)
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ValidationError

from tuneforge.config import RunConfig, Section, format_validation_error
from tuneforge.data import pad_features, read_records
from tuneforge.errors import ConfigError
from tuneforge.hub import resolve_pretrained

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

    def __init__(self, options: BaseModel, config: RunConfig) -> None:
        self.options = options
        self.config = config

    @classmethod
    def parse_options(cls, raw: dict[str, Any], source: str = "config") -> BaseModel:
        try:
            return cls.Options.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, cls.Options, source, prefix="task.")) from None

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
        return resolve_pretrained(self.config.model.name_or_path)

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        from transformers import AutoTokenizer

        m = self.config.model
        name = resolve_pretrained(m.tokenizer) if m.tokenizer else self.model_path()
        return AutoTokenizer.from_pretrained(name, revision=m.revision, trust_remote_code=m.trust_remote_code)

    def pretrained_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``from_pretrained`` built from ``model:``."""
        m = self.config.model
        kwargs: dict[str, Any] = {"revision": m.revision, "trust_remote_code": m.trust_remote_code}
        if m.dtype != "float32":
            kwargs["dtype"] = m.dtype if m.dtype == "auto" else getattr(torch, m.dtype)
        kwargs.update(m.config_overrides)
        return kwargs

    @abstractmethod
    def build_model(self, tokenizer: PreTrainedTokenizerBase) -> torch.nn.Module:
        """Build the model with this task's head (called after ``prepare``)."""

    # -- features -------------------------------------------------------------------

    @abstractmethod
    def encode(
        self, records: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, split: str
    ) -> list[dict[str, Any]]:
        """Tokenize records into features (dicts of lists/ints). May emit several per record."""

    def collate(self, features: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase) -> dict[str, torch.Tensor]:
        """Batch features with dynamic padding (pad to the longest in the batch)."""
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

    def predictions(
        self, outputs: dict[str, np.ndarray], features: list[dict[str, Any]], records: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """One prediction dict per input record (used by ``tuneforge predict``)."""
        raise NotImplementedError(f"task '{self.name}' does not implement predictions()")

    def write_reports(  # noqa: B027 - optional hook
        self, outputs: dict[str, np.ndarray], split: str, features: list[dict[str, Any]], directory: Path
    ) -> None:
        """Write task-specific reports (per-class tables, samples) for ``split`` into ``directory``."""
