"""Running trials: each one a process group launched for a sampled parameter set, kept alive
with a heartbeat in the study's storage, and read back into a :class:`TrialOutcome`; and the
default driver, ``workers`` threads that ask the study for trials until the budget is used."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneforge.errors import TuneforgeError
from tuneforge.search.launcher import ProcessResult, TrialProcess, trial_command
from tuneforge.search.objective import STATUS, objective_value, read_json
from tuneforge.search.space import apply_params, to_overrides
from tuneforge.search.storage import fail_stale_trials
from tuneforge.search.study import budget_used, has_waiting, trial_state
from tuneforge.search.trial import SPEC

if TYPE_CHECKING:
    from tuneforge.search.runner import StudyRunner

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


class Heartbeat:
    """Records a trial's heartbeat in the storage every ``interval`` seconds while it runs."""

    def __init__(self, storage: Any, trial_id: int, interval: int) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat-{trial_id}")

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as exc:  # a storage hiccup must not kill the trial
                log.warning("heartbeat of trial %s failed: %s", self.trial_id, exc)

    def __enter__(self) -> Heartbeat:
        try:  # beaten before the trial process starts
            self.storage.record_heartbeat(self.trial_id)
        except Exception as exc:
            log.warning("heartbeat of trial %s failed: %s", self.trial_id, exc)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class TrialExecutor:
    """Launches the trial processes of ``runner``'s study and tells the study how they ended."""

    def __init__(self, runner: StudyRunner) -> None:
        self.runner = runner
        self.stopped = threading.Event()
        self.active: dict[int, TrialProcess] = {}

    def trial_dir(self, number: int) -> Path:
        return self.runner.study_dir / "trials" / f"trial-{number:04d}"

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
        r = self.runner
        run_dir = self.trial_dir(trial.number)
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        outcome = TrialOutcome(trial.number, "failed", run_dir=run_dir)
        try:
            r.validate_trial_config(apply_params(r.base_raw, params))
        except TuneforgeError as exc:
            outcome.error = "invalid config: " + str(exc).replace("\n", "; ")
            return outcome
        t = r.search.trial
        overrides = [
            *r.overrides, *to_overrides(params),
            f"output.dir={json.dumps(str(run_dir))}", "output.overwrite=true",
            f"output.export={'true' if t.export else 'false'}", *(extra_overrides or []),
        ]
        spec = {
            "study_name": r.study_name, "storage": r.storage_url, "trial_id": trial._trial_id,
            "trial_number": trial.number, "controller_pid": os.getpid(), "launched_at": time.time(),
            "report_metric": r.objectives[0].name if r.objectives[0].split == "validation" else None,
            "prune": r.search.pruner.type != "none" and r.strategy.supports_pruning,
            "pruner": r.search.pruner.model_dump(), "stop_at_step": stop_at_step,
            "apply_hparams": apply_hparams, "params": params,
        }
        spec_path = run_dir / SPEC
        spec_path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
        proc, result = self._launch(trial, trial_command(r.config_path, overrides, spec_path, t.nproc), run_dir)
        self._read(outcome, proc, result, spec["launched_at"], last_value)
        keep = t.keep_checkpoints if keep_checkpoints is None else keep_checkpoints
        if not keep:
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        return outcome

    def _launch(self, trial: Any, cmd: list[str], run_dir: Path) -> tuple[TrialProcess, ProcessResult]:
        """Run ``cmd`` to its end (or ``search.trial.timeout_minutes``), beating the trial's heartbeat."""
        r = self.runner
        timeout = 60 * r.search.trial.timeout_minutes if r.search.trial.timeout_minutes else None
        with Heartbeat(r.study._storage, trial._trial_id, r.search.heartbeat_seconds):
            proc = TrialProcess(cmd, run_dir / "trial.log", self.trial_env())
            self.active[trial.number] = proc
            try:
                result = proc.wait(timeout)
            finally:
                self.active.pop(trial.number, None)
        return proc, result

    def _read(self, outcome: TrialOutcome, proc: TrialProcess, result: ProcessResult, launched_at: float,
              last_value: bool) -> None:
        """Fill ``outcome`` from what the trial wrote in its run directory."""
        run_dir = outcome.run_dir
        assert run_dir is not None
        outcome.exit_code, outcome.wall_seconds = result.returncode, result.wall_seconds
        status = read_json(run_dir / STATUS)
        results = read_json(run_dir / "results.json")
        outcome.steps = status.get("step") if status.get("step") is not None else results.get("steps")
        info = read_json(run_dir / "trial_info.json")
        if info.get("fit_start") and status.get("exit_time"):
            # launch overhead: controller launch -> first training step, plus process exit after the run
            startup = float(info["fit_start"]) - launched_at
            teardown = max(0.0, proc.started + result.wall_seconds - float(status["exit_time"]))
            outcome.overhead_seconds = round(startup + teardown, 3)
            outcome.attrs["startup_seconds"] = round(startup, 3)
            if info.get("train_loop_seconds") is not None:
                outcome.attrs["train_loop_seconds"] = info["train_loop_seconds"]
        if result.returncode != 0 or status.get("status") == "failed" or not status:
            outcome.error = result.error or status.get("error") or "the trial wrote no status"
            if self.stopped.is_set():
                outcome.error = "stopped: the study was interrupted"
            return
        outcome.state = {"pruned": "pruned", "paused": "paused"}.get(status["status"], "complete")
        if outcome.state == "pruned":
            return
        try:
            outcome.values = [objective_value(o, run_dir, last=last_value) for o in self.runner.objectives]
        except TuneforgeError as exc:
            outcome.state, outcome.error = "failed", str(exc)

    def trial_env(self) -> dict[str, str]:
        """Environment of trial processes: ``search.trial.env`` plus a fair share of CPU threads
        (``OMP_NUM_THREADS``) so N parallel trials do not oversubscribe the cores."""
        t = self.runner.search.trial
        env = {"PYTHONUNBUFFERED": "1"}
        if "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // (self.runner.workers * t.nproc)))
        return {**env, **t.env}

    def tell(self, trial: Any, outcome: TrialOutcome) -> None:
        """Record ``outcome`` on the trial and tell the study; echo one line about it."""
        r = self.runner
        attrs = {
            "run_dir": str(outcome.run_dir), "exit_code": outcome.exit_code, "error": outcome.error,
            "steps": outcome.steps, "wall_seconds": round(outcome.wall_seconds, 2),
            "overhead_seconds": outcome.overhead_seconds, "status": outcome.state, **outcome.attrs,
        }
        for k, v in attrs.items():
            if v is not None:
                trial.set_user_attr(k, v)
        if outcome.state in ("complete", "paused") and outcome.values is not None:
            r.study.tell(trial, outcome.values)
            shown = ", ".join(f"{o.metric}={v:.4g}" for o, v in zip(r.objectives, outcome.values))
            r.echo(f"trial {outcome.number}: {shown} ({outcome.steps} steps, {outcome.wall_seconds:.1f} s)")
        elif outcome.state == "pruned":
            r.study.tell(trial, state=trial_state("PRUNED"))
            r.echo(f"trial {outcome.number}: pruned at step {outcome.steps}")
        else:
            r.study.tell(trial, state=trial_state("FAIL"))
            r.echo(f"trial {outcome.number}: failed (exit {outcome.exit_code}): {outcome.error}")

    def shutdown(self) -> None:
        """Stop launching and kill the process groups of running trials."""
        self.stopped.set()
        for proc in list(self.active.values()):
            proc.kill(grace=5.0)


class WorkerPool:
    """The default driver: ``runner.workers`` threads each ask the study for a trial (with the
    strategy's sampler), run it and tell the study, until the budget or the time is used."""

    def __init__(self, runner: StudyRunner, sampler: Any) -> None:
        self.runner, self.sampler = runner, sampler
        self._lock = threading.Lock()

    def run(self) -> None:
        threads = [threading.Thread(target=self._worker, name=f"search-worker-{i}", daemon=True)
                   for i in range(self.runner.workers)]
        try:
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(0.2)
        finally:
            self.runner.shutdown()

    def _next(self) -> tuple[Any, dict[str, Any]] | None:
        """The next trial and its parameters, or None when the study is done."""
        r = self.runner
        with self._lock:
            fail_stale_trials(r.study)
            if budget_used(r.study) >= r.search.n_trials or r.out_of_time():
                return None
            exhausted = getattr(self.sampler, "is_exhausted", None)
            if exhausted is not None and exhausted(r.study) and not has_waiting(r.study):
                r.echo("the strategy has no new parameters to propose (grid exhausted)")
                return None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trial = r.study.ask()
                # beat at once: a trial is never RUNNING without a heartbeat for long (a controller
                # killed now leaves a trial the next one can see is stale)
                r.study._storage.record_heartbeat(trial._trial_id)
                try:
                    return trial, r.space.sample(trial, r.base_raw)
                except Exception as exc:  # a sampler failing must not leave the trial RUNNING
                    r.study.tell(trial, state=trial_state("FAIL"))
                    raise TuneforgeError(f"strategy '{r.search.strategy}' failed to sample: {exc}") from exc

    def _worker(self) -> None:
        r = self.runner
        while not r.executor.stopped.is_set():
            job = self._next()
            if job is None:
                return
            trial, params = job
            try:
                outcome = r.execute(trial, params)
            except BaseException:
                r.study.tell(trial, state=trial_state("FAIL"))
                raise
            r.tell(trial, outcome)
