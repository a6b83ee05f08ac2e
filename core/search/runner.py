"""The study runner: turns a config with a ``search:`` section into a finished study.

Preflight (plugins, data files, the space against the config schema, objectives,
strategy options) runs before any trial. Then the strategy runs the study,
normally through :meth:`StudyRunner.optimize`: ``workers`` threads each ask the
study for a trial, launch it as its own process group, keep its heartbeat while it
runs, and tell the study how it ended. Every number and reason lands in the
study's storage, so a killed study resumes (``--resume``) from there.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.config import RunConfig, apply_overrides, read_yaml, resolve_paths, validate
from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.meta.warmstart import best_of_similar, record_task_metadata, task_metadata
from tuneforge.plugin_manager import PluginManager
from tuneforge.search.launcher import TrialProcess, trial_command
from tuneforge.search.objective import (
    STATUS,
    Objective,
    check_objectives,
    objective_value,
    read_json,
    resolve_objectives,
)
from tuneforge.search.pruners import build_pruner
from tuneforge.search.space import SearchSpace, apply_params, to_overrides
from tuneforge.search.storage import (
    default_storage_url,
    fail_stale_trials,
    open_storage,
    retried_numbers,
)
from tuneforge.search.strategy import SearchStrategy
from tuneforge.search.trial import SPEC

log = logging.getLogger("tuneforge.search")


@dataclass
class TrialOutcome:
    """How one trial ended, as the controller saw it."""

    number: int
    state: str  # complete | pruned | failed | paused
    values: list[float] | None = None
    error: str | None = None
    exit_code: int | None = None
    run_dir: Path | None = None
    steps: int | None = None
    wall_seconds: float = 0.0
    overhead_seconds: float | None = None
    attrs: dict[str, Any] = field(default_factory=dict)


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
        raw = read_yaml(config_path)
        resolve_paths(raw, Path(config_path).resolve().parent)
        self.base_raw = apply_overrides(raw, self.overrides)
        self.config: RunConfig = validate(self.base_raw, source=str(config_path))
        if self.config.search is None:
            raise ConfigError(f"{config_path}: no 'search:' section; add one (see docs/search.md)")
        self.search = self.config.search
        self.workers = workers or self.search.workers
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")

        from tuneforge.run import preflight

        self.plugins = PluginManager.default(self.config.plugins).build_registries()
        plan = preflight(self.config, self.plugins, check_output=False)
        self.space = SearchSpace.from_config(self.search)
        self.space.check(self.base_raw, self.validate_trial_config)
        self.objectives: list[Objective] = resolve_objectives(self.config, plan.task_cls)
        check_objectives(self.objectives, self.config, plan.task_cls)
        self.seed = self.search.seed if self.search.seed is not None else self.config.training.seed
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
        self.task_metadata = task_metadata(self.config, plan.make_task().read(train, "train") if train else [])
        self.study_dir = Path(self.search.dir).resolve()
        self.storage_url = storage or self.search.storage or default_storage_url(self.study_dir)
        self.study_name = self.search.study_name or self.study_dir.name
        self.study: Any = None
        self.sampler: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._active: dict[int, TrialProcess] = {}
        self._deadline = (time.time() + 60 * self.search.timeout_minutes) if self.search.timeout_minutes else None

    # -- config ---------------------------------------------------------------------

    def validate_trial_config(self, raw: dict[str, Any]) -> RunConfig:
        """Schema + plugin options of one trial's config (cheap; no files read)."""
        from tuneforge.run import preflight

        cfg = validate(raw, source=f"{self.config_path} (search trial)")
        preflight(cfg, self.plugins, check_output=False)
        return cfg

    # -- study ----------------------------------------------------------------------

    def open_study(self, sampler: Any) -> Any:
        import optuna

        self.study_dir.mkdir(parents=True, exist_ok=True)
        storage = open_storage(self.storage_url, self.search.heartbeat_seconds, self.search.max_retries)
        directions = [o.direction for o in self.objectives]
        exists = self.study_name in optuna.get_all_study_names(storage)
        if exists:
            old = optuna.load_study(study_name=self.study_name, storage=storage)
            if old.get_trials(deepcopy=False) and not self.resume:
                raise ConfigError(
                    f"study '{self.study_name}' in {self.storage_url} already has {len(old.trials)} trials; "
                    "continue it (or join it from another machine) with --resume, or set another search.dir "
                    "or search.study_name"
                )
            if [d.name.lower() for d in old.directions] != directions:
                raise ConfigError(
                    f"study '{self.study_name}' optimises {[d.name.lower() for d in old.directions]} but the config "
                    f"asks for {directions} ({[o.metric for o in self.objectives]}); use another study name"
                )
        study = optuna.create_study(storage=storage, sampler=sampler, pruner=build_pruner(self.search.pruner),
                                    study_name=self.study_name, directions=directions, load_if_exists=True)
        study.set_user_attr("tuneforge", {
            "config": self.config_path, "overrides": self.overrides,
            "objectives": [[o.metric, o.direction] for o in self.objectives],
            "params": self.space.keys, "strategy": self.search.strategy,
        })
        record_task_metadata(study, self.task_metadata)  # lets later studies of similar tasks start from ours
        self.study = study
        return study

    def load_existing(self) -> Any:
        """The study as stored (for ``--show``); a ConfigError if there is none."""
        import optuna

        storage = open_storage(self.storage_url, heartbeat_seconds=None)
        if self.study_name not in optuna.get_all_study_names(storage):
            raise ConfigError(f"no study '{self.study_name}' in {self.storage_url}; run `tuneforge search` first")
        self.study = optuna.load_study(study_name=self.study_name, storage=storage)
        return self.study

    def warm_start(self) -> int:
        """Enqueue ``search.warm_start`` parameter sets and earlier studies' best trials."""
        ws = self.search.warm_start
        candidates: list[dict[str, Any]] = []
        for i, params in enumerate(ws.enqueue):
            unknown = sorted(set(params) - set(self.space.keys))
            if unknown:
                raise ConfigError(f"search.warm_start.enqueue[{i}]: {unknown} are not in search.params "
                                  f"({', '.join(self.space.keys)})")
            candidates.append(dict(params))
        for ref in ws.studies:
            candidates += best_params_of(ref, ws.top_k, self.space.keys)
        sources: dict[str, dict[str, Any]] = {}
        for where in ws.similar_tasks:
            for params, name, score in self.similar_task_trials(where):
                candidates.append(params)
                sources.setdefault(json.dumps(params, sort_keys=True),
                                   {"warm_start_from": f"{where}#{name}", "task_similarity": round(score, 3)})
        done = {json.dumps(t.params or t.system_attrs.get("fixed_params", {}), sort_keys=True)  # waiting: fixed_params
                for t in self.study.get_trials(deepcopy=False)}
        n = 0
        for params in candidates:
            key = json.dumps(params, sort_keys=True)
            params = {k: self.space[k].clip(v) for k, v in params.items() if k in self.space.keys}
            if json.dumps(params, sort_keys=True) in done:
                continue
            done.add(json.dumps(params, sort_keys=True))
            attrs = {"warm_start": True, **sources.get(key, {})}
            self.study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=True)
            n += 1
        return n

    def similar_task_trials(self, where: str) -> list[tuple[dict[str, Any], str, float]]:
        """Best trials of the studies at ``where`` (a study directory, a directory of study
        directories, or a storage URL) that tuned tasks similar to this one."""
        ws = self.search.warm_start
        if "://" in where:
            urls = [where]
        else:
            root = Path(where).resolve()
            dbs = [root / "study.db"] if (root / "study.db").is_file() else sorted(root.glob("*/study.db"))
            if not root.is_dir():
                raise ConfigError(f"search.warm_start.similar_tasks: '{where}' is not a directory or storage URL")
            urls = [default_storage_url(db.parent) for db in dbs if db.parent != self.study_dir]
        found: list[tuple[dict[str, Any], str, float]] = []
        for url in urls:
            exclude = self.study_name if url == self.storage_url else None
            found += best_of_similar(open_storage(url, heartbeat_seconds=None), self.task_metadata, self.space.keys,
                                     exclude=exclude, top_k=ws.top_k, max_studies=ws.max_similar_studies,
                                     min_similarity=ws.min_similarity)
        found.sort(key=lambda x: -x[2])
        return found

    def budget_used(self) -> int:
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        retried = retried_numbers(trials)
        counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
        return sum(1 for t in trials if t.state in counted and t.number not in retried)

    def _waiting(self) -> bool:
        from optuna.trial import TrialState

        return bool(self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    def out_of_time(self) -> bool:
        return self._deadline is not None and time.time() > self._deadline

    def settle_stale(self) -> None:
        """On resume: wait (at most a grace period) for trials left RUNNING by a dead controller
        to go stale, so they are failed and re-queued before new trials start."""
        from optuna.trial import TrialState

        deadline = time.time() + 2 * self.search.heartbeat_seconds + 2
        while True:
            fail_stale_trials(self.study)
            running = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
            if not running or time.time() > deadline:
                for t in running:
                    self.echo(f"trial {t.number} is still RUNNING with a live heartbeat (another worker?); "
                              "leaving it alone")
                return
            time.sleep(0.5)

    # -- the default driver ---------------------------------------------------------

    def optimize(self) -> None:
        """Ask/tell with the strategy's sampler on ``workers`` threads until the budget is used."""
        self.sampler = self.strategy.sampler()
        self.open_study(self.sampler)
        if self.resume:
            self.settle_stale()
        queued = self.warm_start()
        if queued:
            self.echo(f"warm start: {queued} trial(s) queued")
        threads = [threading.Thread(target=self._worker, name=f"search-worker-{i}", daemon=True)
                   for i in range(self.workers)]
        try:
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(0.2)
        finally:
            self.shutdown()

    def _worker(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                fail_stale_trials(self.study)
                if self.budget_used() >= self.search.n_trials or self.out_of_time():
                    return
                exhausted = getattr(self.sampler, "is_exhausted", None)
                if exhausted is not None and exhausted(self.study) and not self._waiting():
                    self.echo("the strategy has no new parameters to propose (grid exhausted)")
                    return
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    trial = self.study.ask()
                    try:
                        params = self.space.sample(trial, self.base_raw)
                    except Exception as exc:  # a sampler failing must not leave the trial RUNNING
                        self.study.tell(trial, state=_state("FAIL"))
                        raise TuneforgeError(f"strategy '{self.search.strategy}' failed to sample: {exc}") from exc
            try:
                outcome = self.execute(trial, params)
            except BaseException:
                self.study.tell(trial, state=_state("FAIL"))
                raise
            self.tell(trial, outcome)

    def shutdown(self) -> None:
        """Stop launching and kill the process groups of running trials."""
        self._stop.set()
        for proc in list(self._active.values()):
            proc.kill(grace=5.0)

    # -- one trial --------------------------------------------------------------------

    def trial_dir(self, number: int) -> Path:
        return self.study_dir / "trials" / f"trial-{number:04d}"

    def execute(
        self,
        trial: Any,
        params: dict[str, Any],
        *,
        extra_overrides: list[str] | None = None,
        stop_at_step: int | None = None,
        apply_hparams: bool = False,
        last_value: bool = False,
        keep_checkpoints: bool | None = None,
    ) -> TrialOutcome:
        """Run one trial process for ``params`` and read how it went (does not tell the study)."""
        number = trial.number
        run_dir = self.trial_dir(number)
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        outcome = TrialOutcome(number, "failed", run_dir=run_dir)
        try:
            self.validate_trial_config(apply_params(self.base_raw, params))
        except TuneforgeError as exc:
            outcome.error = "invalid config: " + str(exc).replace("\n", "; ")
            return outcome
        t = self.search.trial
        overrides = [
            *self.overrides, *to_overrides(params),
            f"output.dir={json.dumps(str(run_dir))}", "output.overwrite=true",
            f"output.export={'true' if t.export else 'false'}", *(extra_overrides or []),
        ]
        spec = {
            "study_name": self.study_name, "storage": self.storage_url, "trial_id": trial._trial_id,
            "trial_number": number, "controller_pid": _pid(), "launched_at": time.time(),
            "report_metric": self.objectives[0].name if self.objectives[0].split == "validation" else None,
            "prune": self.search.pruner.type != "none" and self.strategy.supports_pruning,
            "pruner": self.search.pruner.model_dump(), "stop_at_step": stop_at_step,
            "apply_hparams": apply_hparams, "params": params,
        }
        spec_path = run_dir / SPEC
        spec_path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
        cmd = trial_command(self.config_path, overrides, spec_path, t.nproc)
        timeout = 60 * t.timeout_minutes if t.timeout_minutes else None
        with self._heartbeat(trial):
            proc = TrialProcess(cmd, run_dir / "trial.log", self.trial_env())
            self._active[number] = proc
            try:
                result = proc.wait(timeout)
            finally:
                self._active.pop(number, None)
        outcome.exit_code, outcome.wall_seconds = result.returncode, result.wall_seconds
        status = read_json(run_dir / STATUS)
        results = read_json(run_dir / "results.json")
        outcome.steps = status.get("step") if status.get("step") is not None else results.get("steps")
        info = read_json(run_dir / "trial_info.json")
        if info.get("fit_start") and status.get("exit_time"):
            # launch overhead: controller launch -> first training step, plus process exit after the run
            startup = float(info["fit_start"]) - spec["launched_at"]
            teardown = max(0.0, proc.started + result.wall_seconds - float(status["exit_time"]))
            outcome.overhead_seconds = round(startup + teardown, 3)
            outcome.attrs["startup_seconds"] = round(startup, 3)
            if info.get("train_loop_seconds") is not None:
                outcome.attrs["train_loop_seconds"] = info["train_loop_seconds"]
        keep = t.keep_checkpoints if keep_checkpoints is None else keep_checkpoints
        if not keep:
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        if result.returncode != 0 or status.get("status") == "failed" or not status:
            outcome.error = result.error or status.get("error") or "the trial wrote no status"
            if self._stop.is_set():
                outcome.error = "stopped: the study was interrupted"
            return outcome
        outcome.state = {"pruned": "pruned", "paused": "paused"}.get(status["status"], "complete")
        if outcome.state == "pruned":
            return outcome
        try:
            outcome.values = [objective_value(o, run_dir, last=last_value) for o in self.objectives]
        except TuneforgeError as exc:
            outcome.state, outcome.error = "failed", str(exc)
        return outcome

    def trial_env(self) -> dict[str, str]:
        """Environment of trial processes: ``search.trial.env`` plus a fair share of CPU threads
        (``OMP_NUM_THREADS``) so N parallel trials do not oversubscribe the cores."""
        import os

        t = self.search.trial
        env = {"PYTHONUNBUFFERED": "1"}
        if "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // (self.workers * t.nproc)))
        return {**env, **t.env}

    def tell(self, trial: Any, outcome: TrialOutcome) -> None:
        attrs = {
            "run_dir": str(outcome.run_dir), "exit_code": outcome.exit_code, "error": outcome.error,
            "steps": outcome.steps, "wall_seconds": round(outcome.wall_seconds, 2),
            "overhead_seconds": outcome.overhead_seconds, "status": outcome.state, **outcome.attrs,
        }
        for k, v in attrs.items():
            if v is not None:
                trial.set_user_attr(k, v)
        if outcome.state in ("complete", "paused") and outcome.values is not None:
            self.study.tell(trial, outcome.values)
            shown = ", ".join(f"{o.metric}={v:.4g}" for o, v in zip(self.objectives, outcome.values))
            self.echo(f"trial {outcome.number}: {shown} ({outcome.steps} steps, {outcome.wall_seconds:.1f} s)")
        elif outcome.state == "pruned":
            self.study.tell(trial, state=_state("PRUNED"))
            self.echo(f"trial {outcome.number}: pruned at step {outcome.steps}")
        else:
            self.study.tell(trial, state=_state("FAIL"))
            self.echo(f"trial {outcome.number}: failed (exit {outcome.exit_code}): {outcome.error}")

    def _heartbeat(self, trial: Any) -> Any:
        return _Heartbeat(self.study._storage, trial._trial_id, self.search.heartbeat_seconds)

    # -- entry point ----------------------------------------------------------------------

    def run(self) -> Any:
        """Run the study with the configured strategy and write the report; returns the study."""
        from tuneforge.search.report import write_report

        try:
            self.strategy.run(self)
        finally:
            if self.study is not None:
                write_report(self)
        return self.study


class _Heartbeat:
    """Records a trial's heartbeat in the storage every ``interval`` seconds while it runs."""

    def __init__(self, storage: Any, trial_id: int, interval: int) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat-{trial_id}")

    def _beat(self) -> None:
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as exc:  # a storage hiccup must not kill the trial
                log.warning("heartbeat of trial %s failed: %s", self.trial_id, exc)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _state(name: str) -> Any:
    from optuna.trial import TrialState

    return TrialState[name]


def _pid() -> int:
    import os

    return os.getpid()


def best_params_of(ref: str, top_k: int, keys: list[str]) -> list[dict[str, Any]]:
    """Parameters of the ``top_k`` best finished trials of an earlier study.

    ``ref`` is a study directory (its ``study.db``), or ``<storage URL>#<study name>``.
    """
    import optuna

    if "://" in ref:
        url, _, name = ref.partition("#")
    else:
        study_dir = Path(ref).resolve()
        url, name = default_storage_url(study_dir), ""
        if not (study_dir / "study.db").is_file():
            raise ConfigError(f"search.warm_start.studies: '{ref}' has no study.db")
    storage = open_storage(url, heartbeat_seconds=None)
    names = optuna.get_all_study_names(storage)
    if not name:
        if len(names) != 1:
            raise ConfigError(f"search.warm_start.studies: '{ref}' holds studies {names}; name one as URL#name")
        name = names[0]
    if name not in names:
        raise ConfigError(f"search.warm_start.studies: no study '{name}' in {ref}; found {names}")
    study = optuna.load_study(study_name=name, storage=storage)
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    sign = 1.0 if study.directions[0].name == "MAXIMIZE" else -1.0
    done.sort(key=lambda t: -sign * t.values[0])
    return [{k: v for k, v in t.params.items() if k in keys} for t in done[:top_k]]
