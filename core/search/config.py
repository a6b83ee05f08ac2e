"""The ``search:`` section of a run config: the space, objectives, pruner, trials and warm start
of ``tuneforge search`` (docs/search.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from tuneforge.config.sections import Section


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
                          "pbt, reinforce, portfolio, or one a plugin registers (default: portfolio when "
                          "search.library has entries, else tpe).")
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
    library: str | None = Field(
        None, description="Study library (a directory or an RDB URL; default $TUNEFORGE_LIBRARY): a finished study "
        "adds an entry; with entries there and no search.strategy set, the portfolio strategy is used (docs/library.md).",
    )
    record_train_runs: bool = Field(
        False, description="`tuneforge train` of this config adds its run to search.library too "
        "(or TUNEFORGE_LIBRARY_TRAIN_RUNS=1 for every run).",
    )

    @model_validator(mode="after")
    def _check_search(self) -> SearchConfig:
        if not self.params:
            raise ValueError("search.params is empty: name at least one dotted config key to search")
        # Imported here: a key is checked against the whole RunConfig, which holds this section.
        from tuneforge.config.suggest import config_key_problem

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
