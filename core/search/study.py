"""The study in its storage: opening (or refusing to reuse) it, and the questions a driver
asks of it (budget used, trials left RUNNING by a dead controller)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

from tuneforge.errors import ConfigError
from tuneforge.search.storage import fail_stale_trials, fail_unbeaten_trials, open_storage, retried_numbers


def create_study(
    url: str, name: str, directions: list[Literal["minimize", "maximize"]], metrics: list[str], *, sampler: Any, pruner: Any, resume: bool,
    heartbeat_seconds: int, max_retries: int,
) -> Any:
    """The study ``name`` in the storage at ``url``, created if absent. One that already has
    trials is reused only with ``resume``, and only if it optimises the same ``directions``."""
    import optuna

    storage = open_storage(url, heartbeat_seconds, max_retries)
    if name in optuna.get_all_study_names(storage):
        old = optuna.load_study(study_name=name, storage=storage)
        if old.get_trials(deepcopy=False) and not resume:
            raise ConfigError(
                f"study '{name}' in {url} already has {len(old.trials)} trials; continue it (or join it from "
                "another machine) with --resume, or set another search.dir or search.study_name"
            )
        if [d.name.lower() for d in old.directions] != directions:
            raise ConfigError(
                f"study '{name}' optimises {[d.name.lower() for d in old.directions]} but the config "
                f"asks for {directions} ({metrics}); use another study name"
            )
    return optuna.create_study(storage=storage, sampler=sampler, pruner=pruner, study_name=name,
                               directions=directions, load_if_exists=True)


def load_study(url: str, name: str) -> Any:
    """The study as stored (for ``--show``); a ConfigError if there is none."""
    import optuna

    storage = open_storage(url, heartbeat_seconds=None)
    if name not in optuna.get_all_study_names(storage):
        raise ConfigError(f"no study '{name}' in {url}; run `tuneforge search` first")
    return optuna.load_study(study_name=name, storage=storage)


def trial_state(name: str) -> Any:
    """Optuna's ``TrialState`` called ``name`` (COMPLETE, PRUNED, FAIL, ...)."""
    from optuna.trial import TrialState

    return TrialState[name]


def budget_used(study: Any) -> int:
    """Trials that count against ``search.n_trials`` (a re-queued retry does not count twice)."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    counted = {trial_state(s) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    return sum(1 for t in trials if t.state in counted and t.number not in retried)


def has_waiting(study: Any) -> bool:
    """Whether trials are queued (enqueued, or re-queued after a failure)."""
    return bool(study.get_trials(deepcopy=False, states=(trial_state("WAITING"),)))


def settle_stale(study: Any, heartbeat_seconds: int, echo: Callable[[str], None]) -> None:
    """On resume: wait (at most a grace period) for trials left RUNNING by a dead controller
    to go stale, so they are failed and re-queued before new trials start."""
    deadline = time.time() + 2 * heartbeat_seconds + 2
    left = {t._trial_id for t in study.get_trials(deepcopy=False, states=(trial_state("RUNNING"),))}
    while True:
        fail_stale_trials(study)
        running = study.get_trials(deepcopy=False, states=(trial_state("RUNNING"),))
        if running and time.time() > deadline:
            # RUNNING since before the resume and never beaten: a controller died right after asking
            for number in fail_unbeaten_trials(study, left):
                echo(f"trial {number} was left RUNNING without a heartbeat by a dead controller; failed it")
            running = study.get_trials(deepcopy=False, states=(trial_state("RUNNING"),))
        if not running or time.time() > deadline:
            for t in running:
                echo(f"trial {t.number} is still RUNNING with a live heartbeat (another worker?); leaving it alone")
            return
        time.sleep(0.5)
