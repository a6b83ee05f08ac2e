"""The typed run configuration: one YAML file describes a run.

* :mod:`tuneforge.config.sections` the run's sections (``model:`` ... ``distributed:``), their defaults
* :mod:`tuneforge.config.schema`   :class:`RunConfig`, the whole run and its checks across sections
* :mod:`tuneforge.config.loading`  YAML, relative paths, dotted overrides, validation, the saved copy
* :mod:`tuneforge.config.suggest`  unknown keys: the valid keys and a "did you mean"
* :mod:`tuneforge.meta.config` and :mod:`tuneforge.search.config`: the ``meta:`` and ``search:`` sections

``load_config`` reads YAML (``yaml.safe_load``), applies dotted command-line overrides
(``training.lr=3e-5``, then ``TUNEFORGE_OVERRIDES``), and validates the result before
anything heavy is imported. Unknown keys are errors with a "did you mean".

Every name below is importable from here; each is imported on first use, so that the
``meta:`` and ``search:`` sections can live in their packages without an import cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuneforge.lazy import lazy_exports

if TYPE_CHECKING:
    from tuneforge.config.loading import (
        apply_overrides,
        diff_keys,
        dump_config,
        env_overrides,
        load_config,
        load_config_dict,
        parse_override,
        read_yaml,
        resolve_paths,
        validate,
        validate_options,
    )
    from tuneforge.config.schema import RunConfig
    from tuneforge.config.sections import (
        AdapterConfig,
        DataConfig,
        DistributedConfig,
        EvalStrategy,
        EvaluationConfig,
        MixedPrecision,
        ModelConfig,
        OpenSection,
        OutputConfig,
        Section,
        TaskConfig,
        TrainingConfig,
    )
    from tuneforge.config.suggest import (
        OTHER_TRAINERS_NAMES,
        config_key_problem,
        format_validation_error,
        suggest_key,
    )
    from tuneforge.meta.config import MetaBaseline, MetaConfig, MetaEvalConfig, MetaSourceTask
    from tuneforge.search.config import (
        SearchConfig,
        SearchObjective,
        SearchParam,
        SearchPruner,
        SearchTrial,
        SearchWarmStart,
    )

__all__ = [
    "OTHER_TRAINERS_NAMES",
    "AdapterConfig",
    "DataConfig",
    "DistributedConfig",
    "EvalStrategy",
    "EvaluationConfig",
    "MetaBaseline",
    "MetaConfig",
    "MetaEvalConfig",
    "MetaSourceTask",
    "MixedPrecision",
    "ModelConfig",
    "OpenSection",
    "OutputConfig",
    "RunConfig",
    "SearchConfig",
    "SearchObjective",
    "SearchParam",
    "SearchPruner",
    "SearchTrial",
    "SearchWarmStart",
    "Section",
    "TaskConfig",
    "TrainingConfig",
    "apply_overrides",
    "config_key_problem",
    "diff_keys",
    "dump_config",
    "env_overrides",
    "format_validation_error",
    "load_config",
    "load_config_dict",
    "parse_override",
    "read_yaml",
    "resolve_paths",
    "suggest_key",
    "validate",
    "validate_options",
]

__getattr__ = lazy_exports(
    __name__,
    __all__,
    (
        "tuneforge.config.sections",
        "tuneforge.meta.config",
        "tuneforge.search.config",
        "tuneforge.config.schema",
        "tuneforge.config.suggest",
        "tuneforge.config.loading",
    ),
)
