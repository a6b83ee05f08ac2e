"""Study storage: SQLite in the study directory by default, or any Optuna RDB URL.

Workers on one machine (``--workers N``) and on several machines (the same
``search.storage`` URL, e.g. PostgreSQL) share one study. A controller records a
heartbeat for every trial it runs; a trial whose heartbeat stops (its controller
was killed) is marked FAIL by the next controller that looks, and re-queued with
the same parameters up to ``search.max_retries`` times.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from tuneforge.errors import ConfigError

STUDY_DB = "study.db"


def default_storage_url(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / STUDY_DB).resolve()}"


def open_storage(url: str, heartbeat_seconds: int | None, max_retries: int = 0) -> Any:
    """An :class:`optuna.storages.RDBStorage` for ``url`` (heartbeat on when given seconds)."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 120}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    kwargs: dict[str, Any] = {}
    if heartbeat_seconds:
        kwargs = {
            "heartbeat_interval": heartbeat_seconds,
            "grace_period": 2 * heartbeat_seconds,
        }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if heartbeat_seconds and max_retries:
            kwargs["heartbeat_stale_trial_callback"] = RetryHeartbeatStaleTrialCallback(max_retry=max_retries)
        try:
            return RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except ImportError as exc:
            raise ConfigError(
                f"storage '{_redact(url)}' needs a database driver that is not installed ({exc}); for "
                "PostgreSQL: pip install psycopg2-binary"
            ) from None
        except Exception as exc:
            raise ConfigError(f"cannot open search storage '{_redact(url)}': {exc}") from None


def _redact(url: str) -> str:
    """The URL without a password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def fail_stale_trials(study: Any) -> None:
    """Mark trials whose heartbeat stopped as FAIL (and re-queue them when retries are on)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def fail_unbeaten_trials(study: Any, trial_ids: set[int]) -> list[int]:
    """Fail (and re-queue, as a stale trial is) those of ``trial_ids`` that are still RUNNING
    and have no heartbeat at all: their controller died between creating the trial and its
    first beat, so Optuna's stale check, which only looks at recorded heartbeats, never ends
    them. Returns the numbers failed. Only call this once every live controller has had time
    to beat (a grace period after a resume started)."""
    import copy

    import optuna
    from optuna.storages._rdb import models  # the heartbeat table has no public reader
    from optuna.storages._rdb.storage import _create_scoped_session

    storage = study._storage
    backend = getattr(storage, "_backend", storage)  # a study wraps its RDB storage in a cache
    if not hasattr(backend, "scoped_session"):
        return []
    with _create_scoped_session(backend.scoped_session) as session:
        rows = (session.query(models.TrialModel)
                .filter(models.TrialModel.state == optuna.trial.TrialState.RUNNING)
                .filter(models.TrialModel.study_id == study._study_id).all())
        unbeaten = [row.trial_id for row in rows if row.trial_id in trial_ids and not row.heartbeats]
    failed = []
    for trial_id in unbeaten:
        try:
            if storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL):
                failed.append(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:  # another controller got there first
            pass
    callback = storage.get_heartbeat_stale_trial_callback()
    numbers = []
    for trial_id in failed:
        trial = copy.deepcopy(storage.get_trial(trial_id))
        numbers.append(trial.number)
        if callback is not None:
            callback(study, trial)
    return numbers


def retried_numbers(trials: list[Any]) -> set[int]:
    """Numbers of failed trials that were re-queued (they do not count against the budget)."""
    return {int(t.system_attrs["failed_trial"]) for t in trials if "failed_trial" in t.system_attrs}


def load_study_ref(ref: str, where: str) -> tuple[Any, str]:
    """``(study, storage URL)`` of an earlier study named by ``ref``: a study directory (its
    ``study.db``) or ``<storage URL>#<study name>`` (the name may be left out when the storage
    holds one study). ``where`` starts each error message (the key or command at fault)."""
    import optuna

    if "://" in ref:
        url, _, name = ref.partition("#")
    else:
        study_dir = Path(ref).resolve()
        if not (study_dir / "study.db").is_file():
            raise ConfigError(f"{where}: '{ref}' is not a study directory (no study.db); give one, or "
                              "<storage URL>#<study name>")
        url, name = default_storage_url(study_dir), ""
    storage = open_storage(url, heartbeat_seconds=None)
    names = optuna.get_all_study_names(storage)
    if not name:
        if len(names) != 1:
            raise ConfigError(f"{where}: '{ref}' holds studies {names}; name one as <storage URL>#<study name>")
        name = names[0]
    if name not in names:
        raise ConfigError(f"{where}: no study '{name}' in {ref}; found {names}")
    return optuna.load_study(study_name=name, storage=storage), url

