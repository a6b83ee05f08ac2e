"""The study runner: turns a config with a ``search:`` section into a finished study.

Preflight (plugins, data files, the space against the config schema, objectives,
strategy options) runs before any trial. Then the strategy runs the study,
normally through :meth:`StudyRunner.optimize`: ``workers`` threads each ask the
study for a trial, launch it as its own process group, keep its heartbeat while it
runs, and tell the study how it ended. Every number and reason lands in the
study's storage, so a killed study resumes (``--resume``) from there.

The parts: :mod:`.study` (the study in its storage), :mod:`.warmstart` (first
trials from earlier studies), :mod:`.executor` (trial processes and the worker pool),
:mod:`.library` (where a finished study is recorded for later studies to learn from).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tuneforge.config import RunConfig, load_config, validate
from tuneforge.errors import ConfigError
from tuneforge.plugin_manager import PluginManager
from tuneforge.search import study as studies
from tuneforge.search.executor import TrialExecutor, TrialOutcome, WorkerPool
from tuneforge.search.library import (
    STUDY_ATTR,
    Library,
    base_recipe,
    entry_from_study,
    library_location,
    meta_features,
    open_library,
)
from tuneforge.search.objective import Objective, check_objectives, resolve_objectives
from tuneforge.search.pruners import build_pruner
from tuneforge.search.space import SearchSpace
from tuneforge.search.storage import default_storage_url
from tuneforge.search.strategy import SearchStrategy
from tuneforge.search.warmstart import queue_warm_start, record_task_metadata, task_metadata

__all__ = ["StudyRunner", "TrialOutcome"]

log = logging.getLogger("tuneforge.search")


class StudyRunner:
    """Everything a strategy needs to run a study; built from a config file (+ overrides)."""

    def __init__(
        self,
        config_path: str | Path,
        overrides: list[str] | None = None,
        *,
        workers: int | None = None,
        resume: bool = False,
        storage: str | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.config_path = str(Path(config_path).resolve())
        self.overrides = list(overrides or [])
        self.resume = resume
        self.echo = echo or (lambda msg: log.info(msg))
        self.config: RunConfig = load_config(config_path, self.overrides)
        #: The config as keys set in the file and overrides (no defaults): trials set their parameters in it.
        self.base_raw: dict[str, Any] = self.config.model_dump(mode="json", exclude_unset=True)
        if self.config.search is None:
            raise ConfigError(f"{config_path}: no 'search:' section; add one (see docs/search.md)")
        self.search = self.config.search
        self.workers = workers or self.search.workers
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        self._preflight()
        self.study_dir = Path(self.search.dir).resolve()
        self.storage_url = storage or self.search.storage or default_storage_url(self.study_dir)
        self.study_name = self.search.study_name or self.study_dir.name
        self.study: Any = None
        self.sampler: Any = None
        self.executor = TrialExecutor(self)
        self._deadline = (time.time() + 60 * self.search.timeout_minutes) if self.search.timeout_minutes else None

    def _preflight(self) -> None:
        """Plugins, space, objectives, strategy and pruner checked before any trial runs."""
        from tuneforge.preflight import preflight

        self.plugins = PluginManager.default(self.config.plugins).build_registries()
        plan = preflight(self.config, self.plugins, check_output=False)
        self.space = SearchSpace.from_config(self.search)
        self.space.check(self.base_raw, self.validate_trial_config)
        self.objectives: list[Objective] = resolve_objectives(self.config, plan.task_cls)
        check_objectives(self.objectives, self.config, plan.task_cls)
        self.seed = self.search.seed if self.search.seed is not None else self.config.training.seed
        location = library_location(self.search.library)
        self.library: Library | None = open_library(location) if location else None
        if self.library is not None and "strategy" not in self.search.model_fields_set and self.library.count():
            self.search.strategy = "portfolio"
            self.echo(f"search.strategy is not set and library {self.library.location} has entries: "
                      "using the portfolio strategy")
        strategy_cls = self.plugins.search_strategies.get(self.search.strategy)
        options = strategy_cls.parse_options(self.search.options, self.search.strategy)
        self.strategy: SearchStrategy = strategy_cls(options, self.space, self.objectives, self.seed)
        if not self.strategy.name:
            self.strategy.name = self.search.strategy
        self.strategy.check()
        if self.search.pruner.type != "none":
            if not strategy_cls.supports_pruning:
                raise ConfigError(f"search strategy '{self.search.strategy}' manages its trials itself; "
                                  "set search.pruner.type: none")
            if self.objectives[0].split != "validation":
                raise ConfigError(f"pruning reads intermediate validation metrics; objective "
                                  f"'{self.objectives[0].metric}' is not one (use validation.<metric>)")
        train = self.config.data.train
        records = plan.make_task().read(train, "train") if train else []
        self.task_metadata = task_metadata(self.config, records)
        self.library_meta = meta_features(self.config, records)

    def validate_trial_config(self, raw: dict[str, Any]) -> RunConfig:
        """Schema + plugin options of one trial's config (cheap; no files read)."""
        from tuneforge.preflight import preflight

        cfg = validate(raw, source=f"{self.config_path} (search trial)")
        preflight(cfg, self.plugins, check_output=False)
        return cfg

    # -- study ----------------------------------------------------------------------

    def open_study(self, sampler: Any) -> Any:
        """Create (or, with ``resume``, continue) the study with ``sampler``; records what it tunes."""
        self.study_dir.mkdir(parents=True, exist_ok=True)
        study = studies.create_study(
            self.storage_url, self.study_name, [o.direction for o in self.objectives],
            [o.metric for o in self.objectives], sampler=sampler, pruner=build_pruner(self.search.pruner),
            resume=self.resume, heartbeat_seconds=self.search.heartbeat_seconds, max_retries=self.search.max_retries,
        )
        study.set_user_attr("tuneforge", {
            "config": self.config_path, "overrides": self.overrides,
            "objectives": [[o.metric, o.direction] for o in self.objectives],
            "params": self.space.keys, "strategy": self.search.strategy,
        })
        record_task_metadata(study, self.task_metadata)  # lets later studies of similar tasks start from ours
        study.set_user_attr(STUDY_ATTR, {"meta": self.library_meta,
                                         "base": base_recipe(self.config.model_dump(mode="json"))})
        self.study = study
        return study

    def load_existing(self) -> Any:
        """The study as stored (for ``--show``); a ConfigError if there is none."""
        self.study = studies.load_study(self.storage_url, self.study_name)
        return self.study

    def warm_start(self) -> int:
        """Enqueue ``search.warm_start`` parameter sets and earlier studies' best trials."""
        return queue_warm_start(self)

    def budget_used(self) -> int:
        return studies.budget_used(self.study)

    def out_of_time(self) -> bool:
        return self._deadline is not None and time.time() > self._deadline

    def settle_stale(self) -> None:
        """On resume: let trials left RUNNING by a dead controller go stale and be re-queued."""
        studies.settle_stale(self.study, self.search.heartbeat_seconds, self.echo)

    # -- trials -----------------------------------------------------------------------

    def optimize(self, first: Sequence[tuple[dict[str, Any], dict[str, Any]]] = ()) -> None:
        """Ask/tell with the strategy's sampler on ``workers`` threads until the budget is used.

        ``first``: ``(params, user attrs)`` a strategy wants run before anything else (the
        portfolio's recipes); one already in the study (a resumed one) is not queued again."""
        self.sampler = self.strategy.sampler()
        self.open_study(self.sampler)
        if self.resume:
            self.settle_stale()
        for params, attrs in first:
            self.study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=True)
        queued = self.warm_start()
        if queued:
            self.echo(f"warm start: {queued} trial(s) queued")
        WorkerPool(self, self.sampler).run()

    def trial_dir(self, number: int) -> Path:
        return self.executor.trial_dir(number)

    def execute(self, trial: Any, params: dict[str, Any], **options: Any) -> TrialOutcome:
        """Run one trial process for ``params`` (see :meth:`TrialExecutor.execute` for the options)."""
        return self.executor.execute(trial, params, **options)

    def trial_env(self) -> dict[str, str]:
        return self.executor.trial_env()

    def tell(self, trial: Any, outcome: TrialOutcome) -> None:
        self.executor.tell(trial, outcome)

    def shutdown(self) -> None:
        """Stop launching and kill the process groups of running trials."""
        self.executor.shutdown()

    # -- entry point ----------------------------------------------------------------------

    def run(self, *, record: bool = True) -> Any:
        """Run the study with the configured strategy and write the report; returns the study.
        A finished study is added to the library (``search.library``) unless ``record`` is false."""
        from tuneforge.search.report import write_report

        try:
            self.strategy.run(self)
        finally:
            if self.study is not None:
                write_report(self)
        if record:
            self.record_in_library()
        return self.study

    def record_in_library(self) -> str | None:
        """Add the finished study to ``search.library`` (if set); returns the entry id."""
        if self.library is None or self.study is None:
            return None
        if not any(t.state.name == "COMPLETE" for t in self.study.get_trials(deepcopy=False)):
            self.echo(f"library: study '{self.study_name}' has no finished trial; nothing recorded")
            return None
        entry = entry_from_study(self.study, f"{self.storage_url}#{self.study_name}", self.library_meta,
                                 base_recipe(self.config.model_dump(mode="json")))
        try:
            entry_id = self.library.add(entry)
        except (OSError, ConfigError) as exc:  # the study's own results are safe; say what was lost
            self.echo(f"library: could not record study '{self.study_name}' in {self.library.location}: {exc}")
            return None
        self.echo(f"library: recorded '{entry_id}' in {self.library.location}")
        return entry_id
