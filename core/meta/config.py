"""The ``meta:`` section of a run config: what ``tuneforge meta`` meta-trains on and how it is
tested (docs/meta-learning.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tuneforge.config.sections import DataConfig, Section, TaskConfig


class MetaSourceTask(Section):
    """One task of a listed meta-learning collection: an ordinary task config and its data."""

    name: str = Field(description="Name of this task in reports.")
    task: TaskConfig = Field(description="The task plugin config (task.name + its options).")
    data: DataConfig = Field(description="The task's data files (train is used; validation/test are added).")


MetaBaseline = Literal["pretrained", "multitask"]
# The choices of task fewshot_classification's loss/head options (tuneforge.contrastive implements them);
# spelled out here because the config stays free of torch.
ContrastiveLoss = Literal["supcon", "pairs"]
HeadKind = Literal["prototype", "logistic"]


def _default_baselines() -> list[MetaBaseline]:
    return ["pretrained", "multitask"]


class MetaEvalConfig(Section):
    """Meta-test: few-shot adaptation on held-out episodes, reported with 95% confidence intervals."""

    ways: list[int] = Field(default_factory=lambda: [5], description="N (classes per episode) settings to test.")
    shots: list[int] = Field(default_factory=lambda: [1, 5], description="K (support examples per class) settings.")
    query: int = Field(5, ge=1, description="Query examples per class scored in each test episode.")
    episodes: int = Field(100, ge=1, description="Held-out episodes per (ways, shots) setting.")
    steps: int | None = Field(
        None, ge=0, description="Adaptation steps per episode (either adaptation); default: meta.inner_steps."
    )
    lr: float | None = Field(
        None, gt=0, description="Adaptation learning rate (meta.inner_optimizer); default: meta.inner_lr."
    )
    batch_size: int | None = Field(None, ge=1, description="Support examples per step; default: the whole support set.")
    baselines: list[MetaBaseline] = Field(
        default_factory=_default_baselines,
        description="Starts compared with the meta-learned one on the same episodes (and the same adaptation).",
    )
    adaptation: Literal["finetune", "contrastive"] = Field(
        "finetune",
        description="How each start adapts to an episode's support set: finetune (cross-entropy through the "
        "prototype-initialised cosine head) or contrastive (meta.eval.contrastive_loss on the support embeddings, "
        "then meta.eval.head fitted on them).",
    )
    contrastive_loss: ContrastiveLoss = Field(
        "supcon", description="adaptation=contrastive: supcon (supervised contrastive) or pairs (SetFit's pairs)."
    )
    temperature: float = Field(0.07, gt=0, description="contrastive_loss=supcon: temperature of the similarities.")
    pairs_per_example: int = Field(
        1, ge=1, description="contrastive_loss=pairs: positive + negative pairs drawn per support example per step."
    )
    head: HeadKind = Field(
        "logistic",
        description="adaptation=contrastive: classifier fitted on the adapted support embeddings: prototype "
        "(nearest class mean) or logistic (logistic regression).",
    )
    logistic_c: float = Field(1.0, gt=0, description="head=logistic: inverse regularisation strength C.")

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
