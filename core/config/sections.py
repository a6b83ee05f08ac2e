"""The sections of a run config (``model:``, ``task:``, ``data:``, ``training:``, ...) and
their base classes, with their defaults. The ``meta:`` and ``search:`` sections live beside
their packages (:mod:`tuneforge.meta.config`, :mod:`tuneforge.search.config`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator


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
    shots_per_label: int | None = Field(
        None, ge=1, description="Keep exactly K training examples of each label (drawn by shots_seed; a label with "
        "fewer is an error). Validation and test are untouched. Needs a task with a label_field option.")
    shots_seed: int = Field(0, ge=0, description=(
        "Seed of the shots_per_label draw and of the cv_folds split (independent of training.seed)."))
    cv_folds: int | None = Field(None, ge=2, description=(
        "Cross-validate on the (K-shot) training set: train once per fold, each holding one stratified fold out "
        "as validation; the run's validation metrics are the means over folds. Test is not evaluated."))
    cv_fold: int | None = Field(None, ge=0, description=(
        "With cv_folds: run only this fold (0-based) with it as validation; set per fold by the cross-validation."))

    @model_validator(mode="after")
    def _one_validation_source(self) -> DataConfig:
        if self.cv_folds is not None:
            if self.validation is not None or self.validation_fraction is not None:
                raise ValueError("cv_folds takes validation from the training folds; remove validation / "
                                 "validation_fraction (or cv_folds)")
            if self.cv_fold is not None and self.cv_fold >= self.cv_folds:
                raise ValueError(f"cv_fold must be below cv_folds={self.cv_folds}, got {self.cv_fold}")
        elif self.cv_fold is not None:
            raise ValueError("cv_fold needs cv_folds (the number of folds)")
        return self

    @property
    def has_validation(self) -> bool:
        """Whether the run has validation data: a file, a fraction of train, cross-validation folds,
        or a hub dataset."""
        return (self.validation is not None or self.validation_fraction is not None or self.cv_folds is not None
                or self.hf_dataset is not None)


class TrainingConfig(Section):
    epochs: float = Field(3.0, gt=0, description="Passes over the training data (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=0, description=(
        "Optimizer steps to train for; overrides epochs. 0: no training, the start is evaluated and exported."))
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
