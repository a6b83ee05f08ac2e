"""The whole run: :class:`RunConfig`, the sections of :mod:`tuneforge.config.sections` plus the
``meta:`` and ``search:`` sections of their packages, and the checks across sections."""

from __future__ import annotations

import hashlib
import json

from pydantic import Field, PrivateAttr, model_validator

from tuneforge.config.sections import (
    AdapterConfig,
    DataConfig,
    DistributedConfig,
    EvaluationConfig,
    ModelConfig,
    OutputConfig,
    Section,
    TaskConfig,
    TrainingConfig,
)
from tuneforge.meta.config import MetaConfig
from tuneforge.search.config import SearchConfig


class RunConfig(Section):
    """A whole run. Sections are documented in docs/config.md (generated from this schema)."""

    model: ModelConfig
    task: TaskConfig
    data: DataConfig = Field(default_factory=DataConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    adapter: AdapterConfig | None = None
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    meta: MetaConfig | None = Field(None, description="Meta-learning (`tuneforge meta`); see docs/meta-learning.md.")
    search: SearchConfig | None = Field(None, description="Hyperparameter search (`tuneforge search`); see docs/search.md.")
    trackers: list[str] = Field(default_factory=lambda: ["jsonl"], description="Tracker plugins to log to.")
    plugins: list[str] = Field(default_factory=list, description="Extra plugin modules to import and register.")
    resume: str = Field("never", description="'never', 'auto' (latest complete checkpoint), or a checkpoint path.")
    _source: str = PrivateAttr("config")

    @property
    def source(self) -> str:
        """Where the config came from (its file), for errors found after validation."""
        return self._source

    @model_validator(mode="after")
    def _cross_checks(self) -> RunConfig:
        d = self.data
        listed_tasks = self.meta is not None and self.meta.collection == "tasks"
        if d.train is None and d.hf_dataset is None and not listed_tasks:
            raise ValueError("data needs a training file (data.train) or a dataset name (data.hf_dataset)")
        ev = self.evaluation
        if ev.early_stopping_patience is not None and (ev.strategy == "no" or not d.has_validation):
            raise ValueError(
                "evaluation.early_stopping_patience needs evaluation (strategy epoch/steps) "
                "and validation data (data.validation or data.validation_fraction)"
            )
        return self

    def fingerprint(self) -> str:
        """A stable hash of the resolved config (used for rank-consistency checks)."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def eval_batch_size(self) -> int:
        return self.training.eval_batch_size or 2 * self.training.batch_size
