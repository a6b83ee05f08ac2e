"""The typed run configuration: one YAML file describes a run.

Every default lives here. ``load_config`` reads YAML (``yaml.safe_load``), applies
dotted command-line overrides (``training.lr=3e-5``), and validates the result
before anything heavy is imported. Unknown keys are errors with a "did you mean".

Paths inside a config file (``data.*``, a local ``model.name_or_path`` starting
with ``./`` or ``../``, ``distributed.deepspeed_config``) are relative to the
config file; paths given as overrides on the command line are relative to the
current directory. ``output.dir`` is relative to the current directory.
``TUNEFORGE_OVERRIDES`` adds overrides after the command line's.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from tuneforge.errors import ConfigError, did_you_mean


def _yaml_no(value: Any) -> Any:
    """YAML 1.1 reads a bare ``no`` as ``False``; in an option list it means the string."""
    return "no" if value is False else value


MixedPrecision = Annotated[Literal["no", "fp16", "bf16"], BeforeValidator(_yaml_no)]
EvalStrategy = Annotated[Literal["epoch", "steps", "no"], BeforeValidator(_yaml_no)]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are checked."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class OpenSection(BaseModel):
    """A section whose extra keys belong to a plugin (``task:``, ``adapter:``).

    The plugin's own ``Options`` model validates them once the plugin is known.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ModelConfig(Section):
    name_or_path: str = Field(description="Hub name, local directory, or pkg:<package>/<subdir>.")
    gguf_file: str | None = Field(None, description=(
        "A .gguf file inside name_or_path (a name ending in .gguf works too), de-quantised once into a cache."))
    tokenizer: str | None = Field(None, description="Tokenizer name or path; default: the model's.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    trust_remote_code: bool = Field(False, description="Run model code from the hub. Off unless you trust it.")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="dtype the weights are loaded in (compute precision: training.mixed_precision)."
    )
    config_overrides: dict[str, Any] = Field(
        default_factory=dict, description="Keys set on the model's config before loading (e.g. dropout)."
    )


class TaskConfig(OpenSection):
    name: str = Field(description="Task plugin name (see `tuneforge plugins`).")


class DataConfig(Section):
    train: str | None = Field(None, description="Training file (csv, tsv, jsonl, json or a task format).")
    validation: str | None = Field(None, description="Validation file used for evaluation and model selection.")
    test: str | None = Field(None, description="Test file evaluated once with the best model at the end.")
    format: str = Field("auto", description="File format; 'auto' uses the file extension.")
    hf_dataset: str | None = Field(None, description="A Hugging Face `datasets` name instead of files.")
    hf_subset: str | None = Field(None, description="Configuration name of `hf_dataset`.")
    hf_splits: dict[str, str] = Field(
        default_factory=lambda: {"train": "train", "validation": "validation", "test": "test"},
        description="Maps train/validation/test to the dataset's split names.",
    )
    max_length: int = Field(128, ge=8, le=1_000_000, description="Maximum tokens per example.")
    validation_fraction: float | None = Field(
        None, gt=0.0, lt=1.0, description="Hold out this fraction of train as validation (seeded)."
    )
    max_train_samples: int | None = Field(None, ge=1, description="Use only the first N training examples.")
    max_eval_samples: int | None = Field(None, ge=1, description="Use only the first N validation examples.")
    max_test_samples: int | None = Field(None, ge=1, description="Use only the first N test examples.")


class TrainingConfig(Section):
    epochs: float = Field(3.0, gt=0, description="Passes over the training data (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps to train for; overrides epochs.")
    batch_size: int = Field(16, ge=1, description="Examples per device per micro-batch.")
    eval_batch_size: int | None = Field(None, ge=1, description="Default: 2 x batch_size.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    lr: float = Field(5e-5, gt=0, lt=10, description="Peak learning rate of AdamW.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas, each in [0, 1).")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="Decoupled weight decay (not on biases/norms).")
    scheduler: Literal["linear", "cosine", "constant"] = Field("linear", description="LR schedule after warmup.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps (added to warmup_ratio's).")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of total steps used for warmup.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip gradients to this norm; null disables.")
    mixed_precision: MixedPrecision = Field("no", description="Autocast precision (Accelerate).")
    seed: int = Field(42, ge=0, description="Seed for weights init, dropout and data order.")
    group_by_length: bool = Field(False, description="Batch examples of similar length (less padding).")
    log_every_n_steps: int = Field(10, ge=1, description="Console/tracker logging interval in steps.")
    nan_policy: Literal["stop", "skip"] = Field(
        "stop", description="On a non-finite loss: stop with a checkpoint, or skip the step and count it."
    )
    max_nan_skips: int = Field(10, ge=0, description="With nan_policy=skip: stop after this many skips.")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")

    @model_validator(mode="after")
    def _check_betas(self) -> TrainingConfig:
        for b in self.betas:
            if not 0.0 <= b < 1.0:
                raise ValueError(f"each beta must be in [0, 1), got {list(self.betas)}")
        return self


class EvaluationConfig(Section):
    strategy: EvalStrategy = Field("epoch", description="When to evaluate on validation.")
    every_n_steps: int | None = Field(None, ge=1, description="Evaluation interval when strategy=steps.")
    metric: str | None = Field(None, description="Metric for best-model selection; default: the task's primary.")
    extra_metrics: list[str] = Field(
        default_factory=list,
        description="Registered metrics (tf_register_metrics) computed in addition to the task's, e.g. [matthews].",
    )
    greater_is_better: bool | None = Field(None, description="Direction of `metric`; default: the task's.")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many evaluations without improvement."
    )
    early_stopping_min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as improvement.")

    @model_validator(mode="after")
    def _steps_need_interval(self) -> EvaluationConfig:
        if self.strategy == "steps" and self.every_n_steps is None:
            raise ValueError("strategy 'steps' needs every_n_steps (e.g. every_n_steps: 200)")
        return self


class OutputConfig(Section):
    dir: str = Field("runs/run", description="The run directory (checkpoints, logs, exported model).")
    overwrite: bool = Field(False, description="Allow starting fresh in a directory that has checkpoints.")
    save_every_n_steps: int | None = Field(
        None, ge=1, description="Periodic checkpoint interval (optimizer steps; `tuneforge meta`: meta-steps and "
        "multi-task steps, default every tenth of each loop)."
    )
    keep_last: int = Field(2, ge=1, description="Periodic checkpoints kept (the best is kept in addition).")
    save_best: bool = Field(True, description="Checkpoint whenever the selection metric improves.")
    export: bool = Field(True, description="Write the best (or final) model in Hugging Face format to dir/model.")


class AdapterConfig(OpenSection):
    type: str = Field(description="Adapter plugin name, e.g. lora.")


class DistributedConfig(Section):
    strategy: Literal["auto", "ddp", "deepspeed"] = Field(
        "auto", description="auto: DDP when launched with several processes, else a single process."
    )
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage (strategy=deepspeed).")
    offload_optimizer: bool = Field(False, description="ZeRO: keep optimizer state in CPU memory.")
    offload_params: bool = Field(False, description="ZeRO-3: keep parameters in CPU memory.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    deepspeed_config: str | None = Field(None, description="A DeepSpeed JSON; cross-checked with this config.")
    backend: Literal["auto", "nccl", "gloo"] = Field("auto", description="Process-group backend.")
    timeout_minutes: int = Field(30, ge=1, description="Collective-operation timeout.")


class MetaSourceTask(Section):
    """One task of a listed meta-learning collection: an ordinary task config and its data."""

    name: str = Field(description="Name of this task in reports.")
    task: TaskConfig = Field(description="The task plugin config (task.name + its options).")
    data: DataConfig = Field(description="The task's data files (train is used; validation/test are added).")


MetaBaseline = Literal["pretrained", "multitask"]


def _default_baselines() -> list[MetaBaseline]:
    return ["pretrained", "multitask"]


class MetaEvalConfig(Section):
    """Meta-test: few-shot fine-tuning on held-out episodes, reported with 95% confidence intervals."""

    ways: list[int] = Field(default_factory=lambda: [5], description="N (classes per episode) settings to test.")
    shots: list[int] = Field(default_factory=lambda: [1, 5], description="K (support examples per class) settings.")
    query: int = Field(5, ge=1, description="Query examples per class scored in each test episode.")
    episodes: int = Field(100, ge=1, description="Held-out episodes per (ways, shots) setting.")
    steps: int | None = Field(None, ge=0, description="Fine-tuning steps per episode; default: meta.inner_steps.")
    lr: float | None = Field(None, gt=0, description="Fine-tuning learning rate; default: meta.inner_lr.")
    batch_size: int | None = Field(None, ge=1, description="Support examples per step; default: the whole support set.")
    baselines: list[MetaBaseline] = Field(
        default_factory=_default_baselines,
        description="Starts compared with the meta-learned one on the same episodes.",
    )

    @model_validator(mode="after")
    def _positive_settings(self) -> MetaEvalConfig:
        if not self.ways or any(w < 2 for w in self.ways):
            raise ValueError(f"ways must list numbers >= 2, got {self.ways}")
        if not self.shots or any(k < 1 for k in self.shots):
            raise ValueError(f"shots must list numbers >= 1, got {self.shots}")
        return self


class MetaConfig(Section):
    """``tuneforge meta``: meta-train a start on many tasks, then test few-shot adaptation (docs/meta-learning.md)."""

    algorithm: str = Field("reptile", description="Meta-learning algorithm plugin (reptile, fomaml, ...).")
    collection: Literal["labels", "tasks"] = Field(
        "labels",
        description="labels: split the labels of data.train (+validation/test) into disjoint meta-train/val/test "
        "sets; tasks: the tasks listed in meta.tasks / meta.val_tasks / meta.test_tasks.",
    )
    val_labels: float = Field(0.2, gt=0, description="collection=labels: meta-val labels (fraction < 1, or a count).")
    test_labels: float = Field(0.2, gt=0, description="collection=labels: meta-test labels (fraction < 1, or a count).")
    tasks: list[MetaSourceTask] = Field(default_factory=list, description="collection=tasks: meta-train tasks.")
    val_tasks: list[MetaSourceTask] = Field(default_factory=list, description="collection=tasks: meta-val tasks.")
    test_tasks: list[MetaSourceTask] = Field(default_factory=list, description="collection=tasks: meta-test tasks.")
    max_examples_per_label: int | None = Field(
        None, ge=2, description="Keep at most this many examples of each label (seeded; bounds compute)."
    )
    ways: int = Field(5, ge=2, description="Classes per meta-training episode.")
    shots: int = Field(5, ge=1, description="Support examples per class in a meta-training episode.")
    query: int = Field(5, ge=1, description="Query examples per class in a meta-training episode.")
    meta_steps: int = Field(200, ge=0, description="Outer (meta) updates.")
    meta_batch_size: int = Field(4, ge=1, description="Episodes per outer update (spread over processes).")
    inner_steps: int = Field(5, ge=1, description="Inner-loop steps on each episode.")
    inner_lr: float = Field(1e-3, gt=0, description="Inner-loop learning rate.")
    inner_optimizer: Literal["sgd", "adam"] = Field("adam", description="Inner-loop optimizer (fresh per episode).")
    outer_lr: float = Field(1.0, gt=0, description="Outer learning rate (Reptile's epsilon; FOMAML's step size).")
    outer_optimizer: Literal["sgd", "adam"] = Field("sgd", description="Optimizer applying the meta-gradient.")
    outer_schedule: Literal["constant", "linear"] = Field("linear", description="Outer lr schedule (linear: to 0).")
    learn: Literal["full", "top_layers", "adapter"] = Field(
        "full",
        description="What is meta-learned: the whole encoder, its top meta.top_layers layers (lower layers frozen "
        "and cached), or the adapter given in the adapter: section (e.g. LoRA).",
    )
    top_layers: int = Field(1, ge=1, description="learn=top_layers: trainable top transformer layers.")
    pooling: Literal["mean", "cls"] = Field("mean", description="Sentence embedding: mean of tokens or [CLS].")
    head_scale: float = Field(10.0, gt=0, description="Temperature of the cosine head (prototype-initialised).")
    multitask_steps: int | None = Field(
        None, ge=0, description="Steps of the multi-task baseline; default: meta_steps * meta_batch_size."
    )
    multitask_batch_size: int = Field(32, ge=1, description="Examples per multi-task baseline step.")
    multitask_lr: float | None = Field(None, gt=0, description="Adam lr of the multi-task baseline; default: inner_lr.")
    val_episodes: int = Field(20, ge=0, description="Meta-val episodes scored after training (0: none).")
    val_every: int | None = Field(None, ge=1, description="Also score meta-val every N meta-steps.")
    seed: int | None = Field(None, ge=0, description="Seed of label splits and episodes; default: training.seed.")
    eval: MetaEvalConfig = Field(default_factory=MetaEvalConfig)

    @model_validator(mode="after")
    def _collection_needs(self) -> MetaConfig:
        if self.collection == "tasks":
            if not self.tasks or not self.test_tasks:
                raise ValueError("collection 'tasks' needs meta.tasks (meta-train) and meta.test_tasks (meta-test)")
            names = [t.name for t in self.tasks + self.val_tasks + self.test_tasks]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"task names must be unique across tasks/val_tasks/test_tasks; repeated: {dupes}")
        elif self.tasks or self.val_tasks or self.test_tasks:
            raise ValueError("meta.tasks/val_tasks/test_tasks need collection: tasks (collection is 'labels')")
        for key in ("val_labels", "test_labels"):
            value = getattr(self, key)
            if value >= 1 and value != int(value):
                raise ValueError(f"{key} must be a fraction below 1 or a whole number of labels, got {value}")
        return self


class SearchParam(Section):
    """One searched hyperparameter, addressed by its dotted config key (``training.lr``)."""

    type: Literal["float", "int", "categorical"] = Field(description="float, int or categorical.")
    low: float | None = Field(None, description="float/int: lower bound (inclusive).")
    high: float | None = Field(None, description="float/int: upper bound (inclusive).")
    log: bool = Field(False, description="float/int: sample on a log scale (low must be > 0).")
    step: float | None = Field(None, gt=0, description="float/int: quantisation step (not with log).")
    choices: list[Any] | None = Field(None, description="categorical: the values to choose from.")
    when: dict[str, Any] = Field(
        default_factory=dict,
        description="Conditional parameter: searched only when these keys (searched or fixed in the config) "
        "have these values, e.g. {adapter.type: lora}; a list means any of its values.",
    )

    @model_validator(mode="after")
    def _check_shape(self) -> SearchParam:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("a categorical parameter takes only 'choices' (not low/high/log/step)")
            return self
        if self.choices is not None:
            raise ValueError(f"'choices' is for categorical parameters; a {self.type} parameter takes low/high")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs 'low' and 'high'")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0, got low={self.low}")
        if self.log and self.step is not None:
            raise ValueError("'step' and 'log' cannot be combined")
        if self.type == "int":
            for name in ("low", "high", "step"):
                value = getattr(self, name)
                if value is not None and value != int(value):
                    raise ValueError(f"an int parameter needs a whole '{name}', got {value}")
        return self


class SearchObjective(Section):
    """What a trial is scored by: a logged metric and its direction."""

    metric: str = Field(
        description="validation.<m> (best value over the run's evaluations), test.<m>, train_seconds, "
        "wall_seconds, steps, trainable_params or total_params."
    )
    direction: Literal["maximize", "minimize"] | None = Field(
        None, description="Default: the task's direction for validation/test metrics, minimize otherwise."
    )


class SearchPruner(Section):
    """Stop unpromising trials early from their intermediate validation values."""

    type: Literal["none", "median", "successive_halving", "asha", "hyperband"] = Field(
        "none", description="median, successive_halving (asha is the same asynchronous rule), hyperband, or none."
    )
    n_startup_trials: int = Field(3, ge=0, description="median: never prune before this many trials finished.")
    n_warmup_steps: int = Field(0, ge=0, description="median: never prune a trial before this step.")
    min_resource: int | None = Field(None, ge=1, description="SHA/Hyperband: steps before the first rung (auto).")
    max_resource: int | None = Field(None, ge=1, description="Hyperband: steps of a full trial (default: auto).")
    reduction_factor: int = Field(3, ge=2, description="SHA/Hyperband: keep 1/reduction_factor at each rung.")


class SearchTrial(Section):
    """How each trial process is launched (the same distributed settings as a normal run)."""

    nproc: int = Field(1, ge=1, description="Processes per trial (>1: launched with torchrun, gloo/nccl).")
    timeout_minutes: float | None = Field(None, gt=0, description="Kill a trial's process group after this long.")
    keep_checkpoints: bool = Field(False, description="Keep each trial's checkpoints (PBT keeps them regardless).")
    export: bool = Field(False, description="Export each trial's model to its run dir (output.export).")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables of trial processes.")


class SearchWarmStart(Section):
    """Trials run before the strategy's own: known-good configs and the best of earlier studies."""

    enqueue: list[dict[str, Any]] = Field(
        default_factory=list, description="Parameter sets ({dotted key: value}) evaluated first."
    )
    studies: list[str] = Field(
        default_factory=list, description="Earlier study directories (or storage URLs#study) to take best trials from."
    )
    top_k: int = Field(3, ge=1, description="Best trials taken from each earlier study.")
    similar_tasks: list[str] = Field(
        default_factory=list,
        description="Where to look for studies of similar tasks (meta-learning of the recipe): study directories, "
        "directories holding study directories (every */study.db), or storage URLs. The best trials of the most "
        "similar ones (same task plugin; label overlap, training size, same model) are run first.",
    )
    max_similar_studies: int = Field(3, ge=1, description="Most similar studies taken trials from.")
    min_similarity: float = Field(0.3, ge=0, le=1, description="Similarity below which a study is not used.")


class SearchConfig(Section):
    """``tuneforge search``: a study of trials, each an ordinary run of this config plus overrides."""

    strategy: str = Field("tpe", description="Search strategy plugin: random, grid, tpe, gp, cmaes, nsga2, sobol, "
                          "pbt, reinforce, or one a plugin registers.")
    options: dict[str, Any] = Field(default_factory=dict, description="Strategy options (its Options model).")
    params: dict[str, SearchParam] = Field(description="The search space: dotted config key -> parameter.")
    objectives: list[SearchObjective] = Field(
        default_factory=list, description="Default: the run's selection metric on validation. Several: Pareto front."
    )
    n_trials: int = Field(20, ge=1, description="Trials in the study (all workers and sessions together).")
    timeout_minutes: float | None = Field(None, gt=0, description="Stop starting new trials after this long.")
    workers: int = Field(1, ge=1, description="Trials run at once on this machine (--workers).")
    pruner: SearchPruner = Field(default_factory=SearchPruner)
    dir: str = Field("runs/search", description="The study directory (trials, study.db, report).")
    storage: str | None = Field(None, description="Optuna RDB URL; default sqlite:///<dir>/study.db.")
    study_name: str | None = Field(None, description="Default: the study directory's name.")
    seed: int | None = Field(None, ge=0, description="Seed of the strategy; default: training.seed.")
    heartbeat_seconds: int = Field(10, ge=1, description="Trial heartbeat; a silent RUNNING trial is stale after 2x.")
    max_retries: int = Field(1, ge=0, description="Re-runs of a trial left stale by a dead worker.")
    trial: SearchTrial = Field(default_factory=SearchTrial)
    warm_start: SearchWarmStart = Field(default_factory=SearchWarmStart)

    @model_validator(mode="after")
    def _check_search(self) -> SearchConfig:
        if not self.params:
            raise ValueError("search.params is empty: name at least one dotted config key to search")
        for key in self.params:
            problem = config_key_problem(key)
            if problem:
                raise ValueError(f"search.params: {problem}")
        names = [o.metric for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"search.objectives repeats a metric: {names}")
        if self.pruner.type != "none" and len(self.objectives) > 1:
            raise ValueError("pruning needs a single objective; set search.pruner.type: none for multi-objective")
        return self


def config_key_problem(dotted: str) -> str | None:
    """Why ``dotted`` is not a settable key of :class:`RunConfig` (with a did-you-mean), or None.

    Keys under the open ``task``/``adapter`` sections and under dict fields
    (``model.config_overrides.*``) are accepted here; plugins validate them later.
    """
    parts = dotted.split(".")
    if any(not p for p in parts):
        return f"'{dotted}' is not a dotted config key (e.g. training.lr)"
    if parts[0] in ("search", "meta"):
        return f"'{dotted}': the {parts[0]} section itself cannot be searched"
    current: Any = RunConfig
    for i, part in enumerate(parts):
        fields = getattr(current, "model_fields", {})
        if part not in fields:
            if getattr(current, "model_config", {}).get("extra") == "allow":
                return None  # a plugin's option (task:/adapter:); its Options model checks it
            where = ".".join(parts[:i])
            full = {".".join([*parts[:i], f]): f for f in fields}
            hint = did_you_mean(".".join(parts[: i + 1]), full)
            return (f"unknown config key '{dotted}'{hint}; "
                    f"valid keys in {where or 'the top level'}: {', '.join(fields)}")
        annotation = fields[part].annotation
        sub = _model_in(annotation)
        if sub is None:
            if i == len(parts) - 1:
                return None
            if "dict" in str(annotation):
                return None  # e.g. model.config_overrides.hidden_dropout_prob
            return f"'{dotted}': '{'.'.join(parts[: i + 1])}' is a value, not a section"
        current = sub
    return f"'{dotted}' is a whole section; search one of its keys ({', '.join(current.model_fields)})"


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
        has_validation = d.validation is not None or d.validation_fraction is not None or d.hf_dataset
        if ev.early_stopping_patience is not None and (ev.strategy == "no" or not has_validation):
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


# -- loading ---------------------------------------------------------------------

_CONFIG_RELATIVE_KEYS = ("data.train", "data.validation", "data.test", "distributed.deepspeed_config")


def _looks_local(value: str) -> bool:
    return value.startswith(("./", "../", "~"))


def _resolve(value: str, base: Path) -> str:
    if value.startswith("~"):
        return str(Path(value).expanduser())
    p = Path(value)
    return str(p if p.is_absolute() else (base / p).resolve())


def _get(raw: dict[str, Any], dotted: str) -> Any:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"override '{dotted}': '{where}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def resolve_paths(raw: dict[str, Any], base: Path, keys: tuple[str, ...] = _CONFIG_RELATIVE_KEYS) -> None:
    """Make relative file paths in ``raw`` absolute against ``base`` (in place)."""
    for key in keys:
        value = _get(raw, key)
        if isinstance(value, str) and value and "://" not in value:
            _set(raw, key, _resolve(value, base))
    name = _get(raw, "model.name_or_path")
    if isinstance(name, str) and _looks_local(name):
        _set(raw, "model.name_or_path", _resolve(name, base))
    meta = raw.get("meta")
    if isinstance(meta, dict):  # data files of listed meta-learning tasks
        for group in ("tasks", "val_tasks", "test_tasks"):
            for item in meta.get(group) or []:
                if isinstance(item, dict) and isinstance(item.get("data"), dict):
                    resolve_paths(item, base, ("data.train", "data.validation", "data.test"))


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_override(text: str) -> tuple[str, Any]:
    """``"training.lr=3e-5"`` -> ``("training.lr", 3e-05)``; values parse as YAML."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' must look like section.key=value (e.g. training.lr=3e-5)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML: {exc}") from exc
    # YAML 1.1 reads 3e-5 as a string; numbers users type should be numbers.
    if isinstance(parsed, str) and _NUMBER.fullmatch(parsed):
        parsed = float(parsed) if any(c in parsed for c in ".eE") else int(parsed)
    return key, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str], base: Path | None = None) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    cwd = base or Path.cwd()
    for text in overrides:
        key, value = parse_override(text)
        if isinstance(value, str) and (key in _CONFIG_RELATIVE_KEYS or (key == "model.name_or_path" and _looks_local(value))):
            value = _resolve(value, cwd)
        _set(raw, key, value)
    return raw


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model:, task:, ...)")
    return raw


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (sub)model found by walking ``loc`` from ``model``."""
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return []
        annotation = fields[part].annotation
        current = _model_in(annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


# What the HF Trainer (TrainingArguments), Axolotl and LLaMA-Factory call keys that exist here under
# another name: a user coming from them gets the tuneforge key, not a near-miss spelling.
OTHER_TRAINERS_NAMES: dict[str, str] = {
    "learning_rate": "training.lr",
    "num_train_epochs": "training.epochs",
    "num_epochs": "training.epochs",
    "per_device_train_batch_size": "training.batch_size",
    "train_batch_size": "training.batch_size",
    "micro_batch_size": "training.batch_size",
    "per_device_eval_batch_size": "training.eval_batch_size",
    "lr_scheduler_type": "training.scheduler",
    "lr_scheduler": "training.scheduler",
    "adam_beta1": "training.betas",
    "adam_beta2": "training.betas",
    "adam_epsilon": "training.eps",
    "bf16": "training.mixed_precision",
    "fp16": "training.mixed_precision",
    "logging_steps": "training.log_every_n_steps",
    "dataloader_num_workers": "training.num_workers",
    "eval_steps": "evaluation.every_n_steps",
    "eval_strategy": "evaluation.strategy",
    "evaluation_strategy": "evaluation.strategy",
    "metric_for_best_model": "evaluation.metric",
    "output_dir": "output.dir",
    "overwrite_output_dir": "output.overwrite",
    "save_steps": "output.save_every_n_steps",
    "save_total_limit": "output.keep_last",
    "load_best_model_at_end": "output.save_best",
    "resume_from_checkpoint": "resume",
    "model_name_or_path": "model.name_or_path",
    "base_model": "model.name_or_path",
    "max_seq_length": "data.max_length",
    "sequence_len": "data.max_length",
    "cutoff_len": "data.max_length",
    "deepspeed": "distributed.deepspeed_config",
    "report_to": "trackers",
    "lora_r": "adapter.r",
    "lora_alpha": "adapter.alpha",
    "lora_dropout": "adapter.dropout",
    "lora_target_modules": "adapter.target_modules",
    "lora_target": "adapter.target_modules",
}


def suggest_key(path: str, key: str, siblings: list[str]) -> str:
    """The hint of an unknown key: another trainer's name for a tuneforge key, a near-miss of a
    key valid here, or the same key in another section (``evaluation.seed`` -> ``training.seed``)."""
    alias = OTHER_TRAINERS_NAMES.get(key)
    if alias and alias != path:
        return f" (did you mean '{alias}'? '{key}' is another trainer's name for it)"
    hint = did_you_mean(key, siblings)
    if hint:
        return hint
    for section in RunConfig.model_fields:
        if key in _fields_at(RunConfig, (section,)) and f"{section}.{key}" != path:
            return f" (did you mean '{section}.{key}'?)"
    return ""


def format_validation_error(exc: ValidationError, model: type[BaseModel], source: str, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = prefix + ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            key = str(loc[-1])
            siblings = _fields_at(model, loc[:-1])
            valid = f"; valid keys here: {', '.join(siblings)}" if siblings else ""
            lines.append(f"{source}: unknown key '{path}'{suggest_key(path, key, siblings)}{valid}")
        elif err["type"] == "missing":
            lines.append(f"{source}: missing required key '{path}'")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            where = f"'{path}'" if path else "config"
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {where}: {msg}{shown}")
    return "\n".join(lines)


def validate(raw: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, RunConfig, source)) from None
    config._source = source
    return config


def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> RunConfig:
    """Read, resolve, override and validate a run config. Raises :class:`ConfigError`."""
    path = Path(path)
    raw = read_yaml(path)
    resolve_paths(raw, path.resolve().parent)
    raw = apply_overrides(raw, [*(overrides or []), *env_overrides()])
    return validate(raw, source=str(path))


def env_overrides() -> list[str]:
    """Overrides from ``TUNEFORGE_OVERRIDES`` (space-separated, shell quoting), applied after the
    command line's to every config loaded; the docs tests use it to shrink the runs they execute."""
    import shlex

    return shlex.split(os.environ.get("TUNEFORGE_OVERRIDES", ""))


def diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys at which two nested dicts (e.g. config dumps) differ, sorted."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def dump_config(cfg: RunConfig, path: str | os.PathLike[str]) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
